"""Driving an LLMEngine by hand in tests: staggered arrivals, merged results, a clean pool afterwards."""

from __future__ import annotations

from scheduler.outputs import CompletionOutput, merge_outputs


def run_prompts(engine, prompts, params, stagger: int = 0, prefix: str = "r") -> list[CompletionOutput]:
    """Run every prompt to the end (request ids prefix0, prefix1, ...) and return sample 0 of each, in
    prompt order. `params`: one SamplingParams for all, or a list of one per prompt. With stagger > 0
    one request joins every `stagger` steps, while the others decode."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    pending = list(enumerate(prompts))
    deltas = {i: [] for i in range(len(prompts))}
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and (stagger == 0 or step % stagger == 0):
            joining, pending = (pending, []) if stagger == 0 else (pending[:1], pending[1:])
            for i, p in joining:
                engine.add_request(f"{prefix}{i}", p, params[i])
        for out in engine.step():
            if out.request_id.startswith(prefix):
                deltas[int(out.request_id[len(prefix):])].append(out)
        step += 1
    return [merge_outputs(deltas[i]).outputs[0] for i in range(len(prompts))]


def assert_pool_clean(engine) -> None:
    """No request left and no KV block held; the pool's own bookkeeping is consistent."""
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    engine.scheduler.block_manager.pool.check_invariants()
