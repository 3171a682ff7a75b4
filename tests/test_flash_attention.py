"""FlashAttention-4 phases against the torch reference (skipped without CUDA sm90+ and flash-attn-4).

FA4 computes in bf16/fp16 only, and reads a sequence's last page whole, so the cases keep the rows
past each context in that page finite (the engine's zero-initialised cache does); every other
unused slot, the padding of the block tables included, holds NaN.
"""

import pytest
import torch

from models.attention.flash_backend import flash_decode, flash_prefill, flash_unavailable_reason

if flash_unavailable_reason() is not None:
    pytest.skip(flash_unavailable_reason(), allow_module_level=True)

from models.attention import get_backend  # noqa: E402
from tests.attention_cases import Case, assert_close  # noqa: E402

HEADS = [(16, 8), (32, 8)]  # Qwen3-0.6B's and Qwen3-8B's query/KV heads (head_dim 128 in every Qwen3)
# Beyond the Qwen3 shapes, once each: a group of 7 query heads per KV head, fp16, head_dim 64.
ODD = [(28, 4, 128, torch.bfloat16), (16, 8, 128, torch.float16), (8, 2, 64, torch.bfloat16)]


def _decode_lens(batch, max_ctx, seed):
    gen = torch.Generator().manual_seed(seed)
    lens = [max_ctx, 1, 37] + torch.randint(1, max_ctx + 1, (max(batch - 3, 0),), generator=gen).tolist()
    return lens[:batch]


@pytest.mark.parametrize("batch,max_ctx", [(1, 8192), (4, 3000), (33, 1500), (256, 1024)])
@pytest.mark.parametrize("block_size", [16, 64, 128])
@pytest.mark.parametrize("hq,hkv", HEADS)
def test_decode(batch, max_ctx, block_size, hq, hkv):
    _check_decode(batch, max_ctx, block_size, hq, hkv, 128, torch.bfloat16)


@pytest.mark.parametrize("hq,hkv,head_dim,dtype", ODD)
def test_decode_other_shapes(hq, hkv, head_dim, dtype):
    _check_decode(33, 1500, 16, hq, hkv, head_dim, dtype)


def _check_decode(batch, max_ctx, block_size, hq, hkv, head_dim, dtype):
    specs = [(n, 1) for n in _decode_lens(batch, max_ctx, batch * max_ctx)]
    case = Case(specs, block_size, hq, hkv, head_dim, dtype, num_decodes=batch, finite_page_tails=True)
    ref = case.reference()
    case.write_new_kv()
    out = torch.full_like(case.q, float("nan"))
    flash_decode(case.q, case.k_cache, case.v_cache, case.meta, case.scale, out)
    assert_close(out, ref, dtype)


PREFILLS = [
    [(1, 1)], [(2048, 2048)], [(1000, 1000), (77, 77), (3000, 512)],   # fresh prompts, a chunk after a prefix
    [(4097, 1), (600, 300), (129, 64), (65, 65)],                      # 1-token chunk; chunks ending mid-page
]


@pytest.mark.parametrize("specs", PREFILLS)
@pytest.mark.parametrize("block_size", [16, 64, 128])
@pytest.mark.parametrize("hq,hkv", HEADS)
def test_prefill(specs, block_size, hq, hkv):
    _check_prefill(specs, block_size, hq, hkv, 128, torch.bfloat16)


@pytest.mark.parametrize("hq,hkv,head_dim,dtype", ODD)
def test_prefill_other_shapes(hq, hkv, head_dim, dtype):
    _check_prefill(PREFILLS[3], 16, hq, hkv, head_dim, dtype)


def _check_prefill(specs, block_size, hq, hkv, head_dim, dtype):
    case = Case(specs, block_size, hq, hkv, head_dim, dtype, finite_page_tails=True)
    ref = case.reference()
    case.write_new_kv()
    out = torch.full_like(case.q, float("nan"))
    flash_prefill(case.q, case.k_cache, case.v_cache, case.meta, case.scale, out)
    assert_close(out, ref, dtype)


MIXED = [([(5000, 1), (1, 1), (333, 1), (2000, 2000), (900, 257)], 3), ([(n, 1) for n in range(1, 4000, 97)], 42)]


@pytest.mark.parametrize("specs,num_decodes", MIXED)
@pytest.mark.parametrize("backend", ["flash", "triton:flash", "flash:triton"])
@pytest.mark.parametrize("block_size", [16, 128])
def test_mixed_batch_through_the_backend(specs, num_decodes, backend, block_size):
    """Decodes and prefills in one step, the step's K/V written first, each phase by its kernels."""
    case = Case(specs, block_size, 16, 8, 128, torch.bfloat16, num_decodes=num_decodes, finite_page_tails=True)
    ref = case.reference()
    out = get_backend(backend, "cuda").forward(case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta,
                                               case.scale)
    assert_close(out, ref, torch.bfloat16)
    slots = case.meta.slot_mapping
    assert torch.equal(case.k_cache.flatten(0, 1)[slots], case.k)


def test_decode_replays_in_a_cuda_graph():
    """Captured with host lengths pinned to an upper bound (as DecodeGraphs does), replayed on new
    contexts: the same output as an eager call."""
    case = Case([(n, 1) for n in _decode_lens(8, 2000, 1)], 16, 16, 8, 128, torch.bfloat16, num_decodes=8,
                finite_page_tails=True)
    case.write_new_kv()
    meta = case.meta
    pinned = type(meta)(**{f: getattr(meta, f) for f in meta.__slots__ if f not in ("seq_lens_cpu", "scratch")},
                        seq_lens_cpu=[4096] * 8)
    out = torch.zeros_like(case.q)
    for _ in range(2):  # compile outside the capture
        flash_decode(case.q, case.k_cache, case.v_cache, pinned, case.scale, out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        flash_decode(case.q, case.k_cache, case.v_cache, pinned, case.scale, out)
    meta.seq_lens[3:] = torch.clamp(meta.seq_lens[3:] - 5, min=1)  # shorter contexts, same buffers
    graph.replay()
    eager = torch.zeros_like(case.q)
    flash_decode(case.q, case.k_cache, case.v_cache, meta, case.scale, eager)
    torch.cuda.synchronize()
    assert torch.equal(out, eager)

