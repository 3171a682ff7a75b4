"""The asyncio engine: concurrent streams, cancellation frees blocks, failures stay contained,
the event loop stays responsive while the model computes, and two engines share a process."""

import asyncio

import pytest
import torch

from models.sampler import SamplingParams
from scheduler.async_engine import AsyncEngine
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.llm import LLM
from scheduler.outputs import merge_outputs

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = ["The weather today is", "Graph search algorithms", "A short poem about rivers:", "1, 2, 3,"]


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    return [o.outputs[0] for o in LLM(str(tiny_model_dir)).generate(PROMPTS, GREEDY)]


def _engine(tiny_model_dir, **kw):
    return AsyncEngine(LLMEngine(EngineConfig(model=str(tiny_model_dir), **kw)))


def test_concurrent_streams_match_offline(tiny_model_dir, expected):
    engine = _engine(tiny_model_dir)

    async def one(prompt):
        text, ids, finals = "", [], 0
        async for out in engine.generate(prompt, GREEDY):
            text += out.outputs[0].text
            ids += out.outputs[0].token_ids
            finals += out.finished
        return text, ids, finals

    async def main():
        results = await asyncio.gather(*(one(p) for p in PROMPTS))
        await engine.shutdown()
        return results

    for (text, ids, finals), exp in zip(asyncio.run(main()), expected):
        assert (text, ids, finals) == (exp.text, exp.token_ids, 1)


def test_cancel_mid_stream_frees_blocks_and_others_finish(tiny_model_dir, expected):
    engine = _engine(tiny_model_dir)
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def abandon():
        async for out in engine.generate("tell me everything", long):
            if len(out.outputs[0].token_ids) >= 1:
                break  # the client went away

    async def main():
        results = await asyncio.gather(abandon(), engine.complete(PROMPTS[0], GREEDY))
        for _ in range(50):  # the abort is applied between steps
            if not engine.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.01)
        await engine.shutdown()
        return results[1]

    done = asyncio.run(main())
    assert done.outputs[0].token_ids == expected[0].token_ids
    bm = engine.engine.scheduler.block_manager
    assert bm.num_free_blocks == engine.engine.num_kv_blocks
    bm.pool.check_invariants()


def test_bad_request_fails_alone(tiny_model_dir, expected):
    engine = _engine(tiny_model_dir)

    async def main():
        with pytest.raises(ValueError, match="prompt is empty"):
            await engine.complete("", GREEDY)
        out = await engine.complete(PROMPTS[1], GREEDY)
        await engine.shutdown()
        return out

    assert asyncio.run(main()).outputs[0].token_ids == expected[1].token_ids


def test_failed_step_fails_its_requests_not_the_engine(tiny_model_dir, expected):
    engine = _engine(tiny_model_dir)
    runner = engine.engine.runner
    real_execute = runner.execute
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected device fault")
        return real_execute(*args)

    runner.execute = flaky

    async def main():
        with pytest.raises(RuntimeError, match="injected device fault"):
            await engine.complete(PROMPTS[2], GREEDY)
        out = await engine.complete(PROMPTS[2], GREEDY)
        await engine.shutdown()
        return out

    assert asyncio.run(main()).outputs[0].token_ids == expected[2].token_ids
    assert engine.engine.scheduler.block_manager.num_free_blocks == engine.engine.num_kv_blocks


def test_event_loop_stays_responsive_during_steps(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    ticks = 0

    async def ticker(stop):
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        steps_before = ticks
        await engine.complete("hello", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        stop.set()
        await t
        await engine.shutdown()
        return ticks - steps_before

    # 40 steps ran on the worker thread; the loop kept ticking meanwhile, several times per step.
    assert asyncio.run(main()) > 40


def test_two_engines_in_one_process(tiny_model_dir, expected):
    large, small = _engine(tiny_model_dir), _engine(tiny_model_dir)

    async def main():
        outs = await asyncio.gather(*(e.complete(p, GREEDY) for p in PROMPTS for e in (large, small)))
        await large.shutdown()
        await small.shutdown()
        return outs

    outs = asyncio.run(main())
    for i, exp in enumerate(expected):
        assert outs[2 * i].outputs[0].token_ids == exp.token_ids == outs[2 * i + 1].outputs[0].token_ids


def test_warm_up_touches_only_the_scratch_block(tiny_model_dir, expected):
    """The start-up warm-up (run on CUDA before serving) writes only the scratch block: every pool
    block's K/V is bit-identical afterwards, so cached prefixes stay valid and outputs unchanged."""
    llm = LLM(str(tiny_model_dir), async_scheduling=True, block_size=4)  # small blocks: the prompts fill some
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == [e.token_ids for e in expected]
    runner = llm.engine.runner
    pool_kv = lambda: [t[:runner.scratch_block].clone() for layer in runner.kv_caches for t in layer]  # noqa: E731
    before = pool_kv()
    assert any(t.abs().sum() > 0 for t in before)  # the cache holds the prompts' K/V
    llm.engine.runner.warm_up()
    assert all(torch.equal(a, b) for a, b in zip(before, pool_kv()))
    hits = llm.engine.stats().prefix_hit_tokens
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == [e.token_ids for e in expected]
    assert llm.engine.stats().prefix_hit_tokens > hits  # the second run read the cached blocks


def test_a_stream_that_fell_behind_gets_its_deltas_merged(tiny_model_dir, expected):
    """Deltas queued while the consumer was away arrive as one, with nothing lost or repeated."""
    engine = _engine(tiny_model_dir)

    async def main():
        stream = await engine.submit(PROMPTS[0], GREEDY)
        first = await stream.__anext__()
        while engine.engine.has_unfinished_requests():  # let the engine run ahead of this consumer
            await asyncio.sleep(0.01)
        rest = [out async for out in stream]
        await engine.shutdown()
        return first, rest

    first, rest = asyncio.run(main())
    assert len(rest) == 1 and rest[0].finished
    assert first.outputs[0].token_ids + rest[0].outputs[0].token_ids == expected[0].token_ids
    assert first.outputs[0].text + rest[0].outputs[0].text == expected[0].text


def test_output_callbacks_get_what_a_stream_gets(tiny_model_dir, expected):
    """With on_output, each step's outputs reach the callback on the loop, in order, ending with the
    finished one, and add up to what the stream would have given."""
    engine = _engine(tiny_model_dir)

    async def main():
        outputs, done = {i: [] for i in range(len(PROMPTS))}, asyncio.Event()

        def collect(i):
            def take(out):
                outputs[i].append(out)
                if all(o and (isinstance(o[-1], BaseException) or o[-1].finished) for o in outputs.values()):
                    done.set()
            return take

        for i, prompt in enumerate(PROMPTS):
            assert await engine.submit(prompt, GREEDY, on_output=collect(i)) is None
        await asyncio.wait_for(done.wait(), 60)
        await engine.shutdown()
        return outputs

    outputs = asyncio.run(main())
    for i, exp in enumerate(expected):
        merged = merge_outputs(outputs[i])
        assert [o.finished for o in outputs[i]] == [False] * (len(outputs[i]) - 1) + [True]
        assert (merged.outputs[0].token_ids, merged.outputs[0].text) == (exp.token_ids, exp.text)
    assert engine.engine.scheduler.block_manager.num_free_blocks == engine.engine.num_kv_blocks


def test_a_stuck_step_is_reported_with_every_threads_stack(monkeypatch, caplog, capfd):
    """The step loop's watchdog names a step that has run past STALL_SECONDS and dumps the stacks, and
    the engine reads as stalled (for /health) while that step lasts, and as not stalled once it ends."""
    import threading
    import types

    from scheduler.async_engine import StepLoop

    monkeypatch.setattr(StepLoop, "STALL_SECONDS", 0.2)
    monkeypatch.setattr(StepLoop, "WATCH_SECONDS", 0.05)
    release, stepped = threading.Event(), threading.Event()
    shape = "3 one-token rows + 0 prefill rows of 0 tokens"  # the fake engine's last step

    def stuck_step_for_the_test():
        stepped.set()
        release.wait(5)
        return []

    fake = types.SimpleNamespace(has_unfinished_requests=lambda: not stepped.is_set() or not release.is_set(),
                                 step=stuck_step_for_the_test, scheduler=types.SimpleNamespace(running=[1, 2, 3]),
                                 abort_all_requests=lambda: [], describe_recent_steps=lambda: shape)
    engine = AsyncEngine(fake, "stuck")

    async def until(condition, seconds=5.0):
        for _ in range(int(seconds / 0.02)):
            if condition():
                return True
            await asyncio.sleep(0.02)
        return False

    async def main():
        engine._ensure_started()
        assert await until(lambda: stepped.is_set()) and not engine.stalled  # a step, not yet a stall
        assert await until(lambda: engine.stalled) and engine.stalled_seconds > 0.2
        release.set()
        assert await until(lambda: not engine.stalled)  # the step ended: healthy again
        await engine.shutdown()

    with caplog.at_level("WARNING"):
        asyncio.run(main())
    assert "engine 'stuck': a step has run for" in caplog.text
    assert f"(3 sequences running; the last steps launched: {shape})" in caplog.text
    assert caplog.text.count("has run for") == 1  # once a step, though the stall was seen several times
    assert "stuck_step_for_the_test" in capfd.readouterr().err
