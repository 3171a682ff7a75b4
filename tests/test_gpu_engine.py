"""GPU engine checks (skipped without CUDA): the Triton backend with CUDA graphs, and FlashAttention-4
where it runs, produce the same greedy tokens as the torch reference on the same random-weight Qwen3 model;
two engines stepping at once produce what each produces alone."""

import threading

import pytest
import torch

from models.sampler import SamplingParams
from scheduler.llm import LLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def tiny_ids_model_dir(tmp_path_factory):
    """A 2-layer random Qwen3 without a tokenizer: prompts are token ids."""
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                                   max_position_embeddings=2048, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-ids")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def _prompts(n, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 300, (n,), generator=gen).tolist()
    return [torch.randint(100, vocab, (m,), generator=gen).tolist() for m in lengths]


def _tokens(llm, prompts, max_tokens=48):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def test_triton_and_graphs_equal_reference_fp32(tiny_ids_model_dir):
    prompts = _prompts(24, 49152)
    ref = _tokens(LLM(str(tiny_ids_model_dir), dtype="float32", attention_backend="torch"), prompts)
    fast = LLM(str(tiny_ids_model_dir), dtype="float32", attention_backend="triton", max_num_seqs=32)
    assert fast.engine.runner.decode_graphs is not None
    assert _tokens(fast, prompts) == ref


BF16 = dict(load_format="dummy", dtype="bfloat16", max_model_len=2048, kv_cache_gib=4, max_num_seqs=64)


@pytest.fixture(scope="module")
def bf16_reference():
    """Prompts and the torch reference's greedy tokens on Qwen3-0.6B's shapes (dummy weights, seed 0)."""
    ref_llm = LLM("Qwen/Qwen3-0.6B", attention_backend="torch", **BF16)
    prompts = _prompts(32, ref_llm.engine.model_config.vocab_size)
    return prompts, _tokens(ref_llm, prompts)


def _flash_missing() -> str | None:
    from models.attention.flash_backend import flash_unavailable_reason
    return flash_unavailable_reason()


# Greedy tokens of random-weight models sit on near-ties, so any change of rounding flips some and a
# flip ends the agreement of the rest of that sequence. The Triton kernels round as the reference does
# (99.93% on the H200); FA4's outputs differ from Triton's by 2.6-3.0e-3 relative (bench.attention_backends,
# within bf16 rounding; its kernels pass the reference matrix in test_flash_attention.py), and measured
# 96.55% (flash) and 96.81% (triton:flash). A wrong kernel falls far below either bar.
MIN_AGREEMENT = {"triton": 0.99, "auto": 0.95, "flash": 0.95, "triton:flash": 0.95}


@pytest.mark.parametrize("backend", ["triton", "flash", "triton:flash", "auto"])
def test_graphs_agree_with_reference_bf16_qwen3_0_6b(backend, bf16_reference):
    if backend != "triton" and _flash_missing():
        pytest.skip(_flash_missing())
    prompts, ref = bf16_reference
    llm = LLM("Qwen/Qwen3-0.6B", attention_backend=backend, **BF16)
    assert llm.engine.runner.decode_graphs is not None
    fast = _tokens(llm, prompts)
    same = sum(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(ref, fast))
    total = sum(len(x) for x in ref)
    print(f"{backend}: bf16 greedy agreement up to first divergence: {same / total:.2%}")
    assert same / total >= MIN_AGREEMENT[backend]


def test_two_engines_stepping_at_once_produce_what_each_produces_alone():
    """Two engines in one process, each with its CUDA graphs and stream, run at once from two threads:
    their tokens are bit-identical to each engine's run alone. Graphs captured on a shared stream would
    share a cuBLAS workspace and race on it when replayed together (models/cuda_graphs.py)."""
    settings = dict(BF16, kv_cache_gib=2, enable_prefix_caching=False)  # no cache hits on the second run
    engines = {"0.6B": LLM("Qwen/Qwen3-0.6B", **settings), "1.7B": LLM("Qwen/Qwen3-1.7B", **settings)}
    assert all(llm.engine.runner.decode_graphs is not None for llm in engines.values())
    prompts = {name: _prompts(48, llm.engine.model_config.vocab_size, seed=i)
               for i, (name, llm) in enumerate(engines.items())}
    alone = {name: _tokens(llm, prompts[name], max_tokens=96) for name, llm in engines.items()}
    together = {}

    def run(name):
        together[name] = _tokens(engines[name], prompts[name], max_tokens=96)

    threads = [threading.Thread(target=run, args=(name,)) for name in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a step never ended"
    assert together == alone
