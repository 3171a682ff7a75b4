"""Acceptance 2 and 4 on the REAL SmolLM2-135M-Instruct weights: greedy outputs of a continuous
batch equal `transformers.generate()` run one prompt at a time, token for token, also with tiny
prefill chunks, with a pool small enough to force preemption, and with prefix-cache hits; seeded
sampling is the same whatever the batch."""

import pytest
import torch
import transformers

from models.embedded import embedded_model_dir
from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import merge_outputs

MAX_NEW = 24
SYSTEM = ("You are a meticulous assistant for a hospital pharmacy. Answer briefly, state units, "
          "and say so when a question is outside your knowledge.")
QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
             "How many milligrams are in a gram?", "Why is the sky blue? Explain in one sentence.",
             "Translate 'good morning' into Spanish.", "What is 12 times 12?"]
RAW = ["The quick brown fox", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
       "Once upon a time, in a kingdom by the sea, there lived a"]


@pytest.fixture(scope="module")
def model_dir():
    return embedded_model_dir()


@pytest.fixture(scope="module")
def prompts(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    chats = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                     tokenize=False, add_generation_prompt=True) for q in QUESTIONS]
    return [tok(p).input_ids for p in chats + RAW]


@pytest.fixture(scope="module")
def reference(model_dir, prompts):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:  # one prompt at a time: no padding, no batching effects
            gen = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            out.append(gen[0, len(ids):].tolist())
    return out


def _run(engine, prompts, params, stagger=0):
    """Run all prompts through the engine; with stagger > 0, add one new request every `stagger` steps."""
    pending = list(enumerate(prompts))
    deltas = {i: [] for i in range(len(prompts))}
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and (stagger == 0 or step % stagger == 0):
            for i, p in (pending if stagger == 0 else pending[:1]):
                engine.add_request(f"r{i}", p, params)
            pending = [] if stagger == 0 else pending[1:]
        for out in engine.step():
            if out.request_id.startswith("r"):
                deltas[int(out.request_id[1:])].append(out)
        step += 1
    return [merge_outputs(deltas[i]).outputs[0] for i in range(len(prompts))]


GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW)


def _assert_exact(engine, outputs, reference):
    assert [o.token_ids for o in outputs] == reference
    for o in outputs:
        assert o.text == engine.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert o.finish_reason in ("stop", "length")
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks  # nothing leaked
    engine.scheduler.block_manager.pool.check_invariants()


# "async": each step is launched before the previous step's tokens are processed (the CUDA default).
OVERLAP = pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])


@OVERLAP
def test_continuous_batch_equals_one_at_a_time(model_dir, prompts, reference, overlap):
    engine = LLMEngine(EngineConfig(model=str(model_dir), async_scheduling=overlap))
    _assert_exact(engine, _run(engine, prompts, GREEDY), reference)
    # Requests joining while others decode (continuous batching proper), prefix cache now warm.
    _assert_exact(engine, _run(engine, prompts, GREEDY, stagger=3), reference)
    assert engine.scheduler.stats.prefix_hit_tokens > 0


def test_small_prefill_chunks(model_dir, prompts, reference):
    engine = LLMEngine(EngineConfig(model=str(model_dir), max_num_batched_tokens=7, enable_prefix_caching=False))
    assert max(len(p) for p in prompts) > 7 * 4  # every long prompt is split over several steps
    _assert_exact(engine, _run(engine, prompts, GREEDY), reference)


@OVERLAP
def test_preemption_keeps_outputs(model_dir, prompts, reference, overlap):
    longest = max(len(p) for p in prompts) + MAX_NEW
    engine = LLMEngine(EngineConfig(model=str(model_dir), block_size=8, num_kv_blocks=-(-longest // 8) + 4,
                                    async_scheduling=overlap))
    outputs = _run(engine, prompts, GREEDY)
    assert engine.scheduler.stats.num_preemptions > 0
    assert any(o.num_preemptions for o in outputs)
    _assert_exact(engine, outputs, reference)


def test_prefix_cache_hits_keep_outputs(model_dir, prompts, reference):
    engine = LLMEngine(EngineConfig(model=str(model_dir), block_size=4))
    first = _run(engine, prompts[:1], GREEDY)
    rest = _run(engine, prompts[1:], GREEDY)
    stats = engine.scheduler.stats
    shared = len(SYSTEM) // 8  # the system prompt alone is dozens of tokens, all cached after the first
    assert stats.prefix_hit_tokens >= shared * (len(QUESTIONS) - 1)
    _assert_exact(engine, first + rest, reference)


@OVERLAP
def test_seeded_sampling_ignores_batch_composition(model_dir, prompts, overlap):
    # 12 blocks of 8 hold the longest request alone (10 blocks) but never all three at once.
    engine = LLMEngine(EngineConfig(model=str(model_dir), block_size=8, num_kv_blocks=12, async_scheduling=overlap))
    seeded = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=MAX_NEW, seed=1234, ignore_eos=True)
    alone = _run(engine, [prompts[0]], seeded)[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=MAX_NEW, ignore_eos=True)
    engine.add_request("a", prompts[3], others)
    engine.add_request("b", prompts[7], others)
    mixed = _run(engine, [prompts[0]], seeded, stagger=0)[0].token_ids  # other requests share the batch
    assert alone == mixed
    assert engine.scheduler.stats.num_preemptions > 0  # the tiny pool made it reuse a recomputed prefix
    two = merge_outputs(list(_stream(engine, prompts[0], SamplingParams(
        temperature=0.9, top_p=0.9, max_tokens=MAX_NEW, seed=1234, ignore_eos=True, n=2))))
    assert two.outputs[0].token_ids == alone  # sample 0 of n=2 uses the request seed itself
    assert two.outputs[1].token_ids != alone


def _stream(engine, prompt, params):
    engine.add_request("n2", prompt, params)
    while engine.has_unfinished_requests():
        yield from (o for o in engine.step() if o.request_id == "n2")


def test_async_steps_stop_strings_and_aborts(model_dir, prompts, reference):
    """With overlapped steps a sequence ended by a stop string (or cancelled) while its next step
    runs loses that extra token: outputs equal the synchronous engine's, and no block leaks."""
    stop = SamplingParams(temperature=0, max_tokens=MAX_NEW, stop=[" "])
    results = {}
    for overlap in (False, True):
        engine = LLMEngine(EngineConfig(model=str(model_dir), async_scheduling=overlap))
        outs = _run(engine, prompts, stop)
        results[overlap] = [(o.text, o.token_ids, o.finish_reason) for o in outs]
        assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    assert results[True] == results[False]
    assert any(reason == "stop" for _, _, reason in results[True])

    engine = LLMEngine(EngineConfig(model=str(model_dir), async_scheduling=True))
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    for _ in range(4):
        engine.step()
    assert engine._in_flight is not None  # a step is running while we cancel
    cancelled = [engine.abort_request(f"r{i}") for i in range(0, len(prompts), 2)]
    for out in cancelled:
        assert out.finished and all(t >= 0 for t in out.outputs[0].token_ids)
    kept = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            kept.setdefault(out.request_id, []).append(out)
    for rid, outs in kept.items():
        i = int(rid[1:])
        assert i % 2 == 1
        # The deltas before the cancellation were consumed above, so compare the tail.
        tail = merge_outputs(outs).outputs[0].token_ids
        assert reference[i][-len(tail):] == tail
    assert engine.scheduler.block_manager.num_free_blocks == engine.num_kv_blocks
    engine.scheduler.block_manager.pool.check_invariants()
