"""Acceptance 2 and 4 on the REAL SmolLM2-135M-Instruct weights: greedy outputs equal
`transformers.generate()` run one prompt at a time, token for token, in each scheduling mode —
continuous batching, chunked prefill, preemption, prefix-cache hits, overlapped steps, n-gram
speculative decoding — one test each. The mechanics behind them (seeded sampling, stop strings and
aborts under overlapped steps; drafts) are tested on the tiny model in test_engine_mechanics.py and
test_speculative.py."""

import pytest
import torch
import transformers

from models.embedded import embedded_model_dir
from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from tests.engine_runs import assert_pool_clean, run_prompts

MAX_NEW = 24
SYSTEM = ("You are a meticulous assistant for a hospital pharmacy. Answer briefly, state units, "
          "and say so when a question is outside your knowledge.")
QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
             "How many milligrams are in a gram?", "Why is the sky blue? Explain in one sentence.",
             "Translate 'good morning' into Spanish.", "What is 12 times 12?"]
RAW = ["The quick brown fox", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
       "Once upon a time, in a kingdom by the sea, there lived a"]
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW)


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
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:  # one prompt at a time: no padding, no batching effects
            gen = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            out.append(gen[0, len(ids):].tolist())
    return out


def _engine(model_dir, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), **kw))


def _assert_exact(engine, outputs, reference):
    assert [o.token_ids for o in outputs] == reference
    for o in outputs:
        assert o.text == engine.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert o.finish_reason in ("stop", "length")
    assert_pool_clean(engine)


def test_continuous_batching(model_dir, prompts, reference):
    """Requests join one every three steps while the others decode."""
    engine = _engine(model_dir, enable_prefix_caching=False)
    _assert_exact(engine, run_prompts(engine, prompts, GREEDY, stagger=3), reference)


def test_chunked_prefill(model_dir, prompts, reference):
    """A 16-token budget splits every chat prompt over several steps, in chunks of whatever the
    decodes in the same step leave."""
    engine = _engine(model_dir, max_num_batched_tokens=16, enable_prefix_caching=False)
    assert sum(len(p) > 3 * 16 for p in prompts) >= 3
    _assert_exact(engine, run_prompts(engine, prompts, GREEDY), reference)


def test_preemption(model_dir, prompts, reference):
    longest = max(len(p) for p in prompts) + MAX_NEW
    engine = _engine(model_dir, block_size=8, num_kv_blocks=-(-longest // 8) + 4)
    outputs = run_prompts(engine, prompts, GREEDY)
    assert engine.stats().num_preemptions > 0
    assert any(o.num_preemptions for o in outputs)
    _assert_exact(engine, outputs, reference)


def test_prefix_cache_hits(model_dir, prompts, reference):
    engine = _engine(model_dir, block_size=4)
    first = run_prompts(engine, prompts[:1], GREEDY)
    rest = run_prompts(engine, prompts[1:], GREEDY)
    shared = len(SYSTEM) // 8  # the system prompt alone is dozens of tokens, all cached after the first
    assert engine.stats().prefix_hit_tokens >= shared * (len(QUESTIONS) - 1)
    _assert_exact(engine, first + rest, reference)


def test_overlapped_steps(model_dir, prompts, reference):
    """Each step is launched before the previous step's tokens are processed (the CUDA default);
    requests join mid-flight and reuse the shared system prompt's cached blocks."""
    engine = _engine(model_dir, async_scheduling=True)
    _assert_exact(engine, run_prompts(engine, prompts, GREEDY, stagger=3), reference)
    assert engine.stats().prefix_hit_tokens > 0


def test_ngram_speculation(model_dir, prompts, reference):
    """Greedy decodes draft tokens from n-grams of their own text, checked in the step that
    computes them; requests join while others draft. Drafts change no token."""
    engine = _engine(model_dir, speculative_ngram=4)
    outputs = run_prompts(engine, prompts, GREEDY, stagger=2)
    stats = engine.stats()
    assert 0 < stats.accepted_draft_tokens < stats.draft_tokens
    _assert_exact(engine, outputs, reference)
