"""Engine mechanics on the tiny random model: seeded sampling ignores the batch it runs in, and
overlapped steps end sequences (stop strings, cancellations) exactly where synchronous steps do,
without leaking a block. Exactness against transformers is test_engine_smollm2.py's."""

import dataclasses

import pytest

from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import merge_outputs
from tests.engine_runs import assert_pool_clean, run_prompts

MAX_NEW = 24
# Token-id prompts of fixed lengths: 50 + 24 tokens need 10 blocks of 8.
PROMPTS = [[(7 * i + 13 * j) % 4000 + 100 for j in range(length)] for i, length in enumerate((50, 33, 47, 12, 41))]
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)

OVERLAP = pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])


def _engine(tiny_model_dir, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), **kw))


@pytest.fixture(scope="module")
def sync_outputs(tiny_model_dir):
    """Greedy outputs of the synchronous engine, the reference for the overlapped one."""
    return run_prompts(_engine(tiny_model_dir), PROMPTS, GREEDY)


@OVERLAP
def test_seeded_sampling_ignores_batch_composition(tiny_model_dir, overlap):
    # 12 blocks of 8 hold the longest request alone (10 blocks) but never three at once.
    engine = _engine(tiny_model_dir, block_size=8, num_kv_blocks=12, async_scheduling=overlap)
    # A low temperature, so the random model's logits weigh as much as the noise in every draw.
    seeded = SamplingParams(temperature=0.1, top_p=0.9, max_tokens=MAX_NEW, seed=1234, ignore_eos=True)
    alone = run_prompts(engine, [PROMPTS[0]], seeded)[0].token_ids
    assert run_prompts(engine, [PROMPTS[4]], seeded)[0].token_ids != alone  # the logits matter, not only the seed
    others = SamplingParams(temperature=1.0, max_tokens=MAX_NEW, ignore_eos=True)
    engine.add_request("a", PROMPTS[1], others)
    engine.add_request("b", PROMPTS[2], others)
    mixed = run_prompts(engine, [PROMPTS[0]], seeded)[0].token_ids  # other requests share the batch
    assert alone == mixed
    assert engine.stats().num_preemptions > 0  # the tiny pool made it reuse a recomputed prefix
    engine.add_request("n2", PROMPTS[0], dataclasses.replace(seeded, n=2))
    deltas = []
    while engine.has_unfinished_requests():
        deltas += [o for o in engine.step() if o.request_id == "n2"]
    two = merge_outputs(deltas)
    assert two.outputs[0].token_ids == alone  # sample 0 of n=2 uses the request seed itself
    assert two.outputs[1].token_ids != alone
    assert_pool_clean(engine)


def test_stop_strings_under_overlapped_steps(tiny_model_dir):
    """A sequence that a stop string ends while its next step already runs loses that extra
    token: the text, tokens and finish reasons equal the synchronous engine's."""
    engine = _engine(tiny_model_dir)
    # Seeded sampling gives the random model varied text; request i stops at its own (3 + i)-th token's text.
    free = [SamplingParams(temperature=1.0, seed=i, max_tokens=MAX_NEW) for i in range(len(PROMPTS))]
    outputs = run_prompts(engine, PROMPTS, free)
    texts = [engine.tokenizer.decode(o.token_ids[3 + i:4 + i]) for i, o in enumerate(outputs)]
    stopping = [dataclasses.replace(p, stop=[t.strip() or "\n"]) for p, t in zip(free, texts)]
    results = {}
    for overlap in (False, True):
        engine = _engine(tiny_model_dir, async_scheduling=overlap)
        results[overlap] = [(o.text, o.token_ids, o.finish_reason) for o in run_prompts(engine, PROMPTS, stopping)]
        assert_pool_clean(engine)
    assert results[True] == results[False]
    assert sum(reason == "stop" and len(ids) > 1 for _, ids, reason in results[True]) >= 3


def test_cancel_while_a_step_is_in_flight(tiny_model_dir, sync_outputs):
    engine = _engine(tiny_model_dir, async_scheduling=True)
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", p, GREEDY)
    for _ in range(4):
        engine.step()
    assert engine._in_flight is not None  # a step is running while we cancel
    cancelled = [engine.abort_request(f"r{i}") for i in range(0, len(PROMPTS), 2)]
    for out in cancelled:
        assert out.finished and out.outputs[0].finish_reason == "abort"
        assert all(t >= 0 for t in out.outputs[0].token_ids)  # no placeholder handed out
    kept = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            kept.setdefault(out.request_id, []).append(out)
    assert sorted(kept) == [f"r{i}" for i in range(1, len(PROMPTS), 2)]
    for rid, outs in kept.items():
        # The deltas before the cancellation were consumed above, so compare the tail.
        tail = merge_outputs(outs).outputs[0].token_ids
        assert sync_outputs[int(rid[1:])].token_ids[-len(tail):] == tail
    assert_pool_clean(engine)


def test_unstreamed_text_decoded_once_equals_streamed_text(tiny_model_dir):
    """Outputs nobody streams are decoded once when they finish: the text equals what the incremental
    detokenizer makes for a stream, whether the output runs to its length, ends on EOS or a stop
    token (which is not text), or is cut by a stop string (which needs the incremental path)."""
    engine = _engine(tiny_model_dir)
    cases = [SamplingParams(temperature=1.0, seed=s, max_tokens=MAX_NEW, ignore_eos=True) for s in range(4)]
    streamed_greedy = run_prompts(engine, PROMPTS, GREEDY)
    stop_token = streamed_greedy[0].token_ids[5]
    cases += [dataclasses.replace(GREEDY, stop_token_ids=[stop_token]), dataclasses.replace(GREEDY, ignore_eos=False),
              dataclasses.replace(GREEDY, stop=[streamed_greedy[1].text[3:6] or "x"])]
    for params in cases:
        streamed = run_prompts(engine, PROMPTS, params)
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(f"whole{i}", prompt, params, stream=False)
        outs = []
        while engine.has_unfinished_requests():
            outs += engine.step()
        assert sorted(o.request_id for o in outs) == sorted(f"whole{i}" for i in range(len(PROMPTS)))  # once each
        for whole in outs:
            i = int(whole.request_id.removeprefix("whole"))
            assert whole.finished and whole.outputs[0].token_ids == streamed[i].token_ids
            assert (whole.outputs[0].text, whole.outputs[0].finish_reason) == (streamed[i].text,
                                                                                streamed[i].finish_reason)
    assert any(o.finish_reason == "stop" for o in run_prompts(engine, PROMPTS, cases[4]))
    assert_pool_clean(engine)
