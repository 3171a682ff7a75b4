"""An fp8 (e4m3) KV cache (`kv_cache_dtype="fp8"`): twice the tokens a bf16 budget holds (four times
fp32's), the model reading back values rounded to 3 mantissa bits, and refused where it cannot run.
On the CPU through the torch reference; on a CUDA GPU of sm89+ also through the Triton kernels."""

import pytest
import torch

from api.config import parse_args
from bench.quantization import next_token_logits
from models.sampler import SamplingParams
from scheduler.engine import EngineConfig
from scheduler.llm import LLM
from tests.engine_runs import assert_pool_clean

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Write a haiku about the sea."]


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs CUDA sm89+"))])
def llms(request, tiny_model_dir):
    """The same model with its cache in the model's dtype (float32 on the CPU, bf16 on CUDA: Triton
    kernels, CUDA graphs) and with an fp8 one, each given the same 16 MiB budget."""
    return {kv: LLM(str(tiny_model_dir), device=request.param, kv_cache_gib=1 / 64, kv_cache_dtype=kv)
            for kv in ("auto", "fp8")}


@pytest.fixture(scope="module")
def engines(llms):
    return {kv: llm.engine for kv, llm in llms.items()}


def test_the_same_budget_holds_more_blocks(engines):
    full, fp8 = engines["auto"], engines["fp8"]
    assert fp8.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
    assert fp8.num_kv_blocks == full.runner.kv_caches[0][0].element_size() * full.num_kv_blocks  # 4x fp32, 2x bf16


def test_the_model_reads_the_rounded_values(engines):
    """The next-token logits move by the rounding and no more."""
    for prompt in PROMPTS:
        ids = engines["auto"].tokenize(prompt)
        exact, rounded = (next_token_logits(engines[kv], ids) for kv in ("auto", "fp8"))
        error = ((rounded - exact).norm() / exact.norm()).item()
        assert 0 < error < 0.1, (prompt, error)


def test_an_fp8_cache_serves_a_batch_with_prefix_reuse(llms):
    llm = llms["fp8"]
    engine = llm.engine
    prompts = [p * 8 for p in PROMPTS]  # several whole 16-token blocks each: something to cache
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (5, 17, 9)]
    first = llm.generate(prompts, params)
    again = llm.generate(prompts, params)  # the prompts' blocks come from the prefix cache this time
    for a, b, p in zip(first, again, params):
        assert len(a.outputs[0].token_ids) == p.max_tokens and a.outputs[0].token_ids == b.outputs[0].token_ids
    assert engine.stats().prefix_hit_tokens > 0
    assert_pool_clean(engine)


def test_refused_where_it_cannot_run(tiny_model_dir):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(model=str(tiny_model_dir), kv_cache_dtype="int4").resolved_kv_dtype()
    with pytest.raises(ValueError, match="fp8 KV cache"):
        LLM(str(tiny_model_dir), device="cpu", kv_cache_dtype="fp8", attention_backend="flash")


def test_the_server_flag_reaches_both_engines():
    config = parse_args(["--kv-cache-dtype", "fp8", "--small-model", "embedded"])
    assert config.engine_config(small=False).kv_cache_dtype == "fp8"
    assert config.engine_config(small=True).kv_cache_dtype == "fp8"
