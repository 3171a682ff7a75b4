"""The Triton attention kernels and backend against the torch reference.

On CUDA the kernels are compiled and a wide sweep runs; without CUDA they run under the Triton
interpreter (TRITON_INTERPRET=1, set by conftest.py before anything imports triton) on small shapes. The
interpreter computes tl.dot on bfloat16 over the raw bits (it stores bf16 as uint16, and documents
bf16 arithmetic as unsupported), so on CPU the attention cases use fp16/fp32 and bf16 only the copy.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
    import numpy as np

    def _version(text):
        return tuple(int(x) for x in text.split(".")[:2])

    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
        # Before 3.7 the interpreter turns loop bounds into ints with int(1-element array), which numpy 2.4
        # rejects (triton-lang/triton#9171); the compiled GPU path is unaffected.
        pytest.skip("the Triton interpreter needs triton>=3.7 with numpy>=2.4", allow_module_level=True)

from models.attention import get_backend  # noqa: E402
from models.attention.torch_ref import write_kv  # noqa: E402
from models.attention.triton_kernels import (  # noqa: E402
    decode_num_splits, paged_decode_attention, paged_prefill_attention, write_kv_cache)

from tests.attention_cases import Case, assert_close  # noqa: E402

def _decode_specs(batch, max_ctx, gen):
    """Decode contexts: max_ctx (so splits happen), 1, a block-unaligned length, then random lengths."""
    lens = [max_ctx, 1, 37] + torch.randint(1, max_ctx + 1, (max(batch - 3, 0),), generator=gen).tolist()
    return [(n, 1) for n in lens[:batch]]


# (batch, max context, block_size, Hq, Hkv, head_dim, dtype, forced num_splits or None for the heuristic)
if ON_GPU:
    DECODE_SWEEP = [
        (b, ctx, bs, hq, hkv, d, dt, None)
        for b, ctx in [(1, 8192), (4, 3000), (33, 1500), (128, 700)]
        for bs in (8, 16, 32)
        for hq, hkv in [(32, 8), (16, 16), (28, 4), (64, 8), (40, 8)]  # (40, 8): Qwen3-14B's groups of 5
        for d in (64, 128)
        for dt in (torch.bfloat16, torch.float16)
    ] + [(3, 2000, 16, 8, 2, 128, torch.float32, None), (2, 5000, 16, 8, 1, 128, torch.bfloat16, 7)]
else:
    DECODE_SWEEP = [
        (3, 300, 16, 4, 2, 64, torch.float16, None),  # heuristic: 2 splits
        (2, 200, 8, 8, 1, 32, torch.float16, 3),
        (3, 150, 32, 4, 4, 16, torch.float32, 1),
        (2, 130, 16, 6, 2, 64, torch.float32, 2),  # group of 3 heads, padded to 16 dot rows
        (5, 700, 32, 8, 2, 128, torch.float16, 5),  # short sequences leave trailing partitions empty
        (4, 400, 16, 10, 2, 64, torch.float16, None),  # groups of 5 heads (Qwen3-14B's 40 over 8)
    ]


def _decode_against_reference(case, splits=None):
    """(the decode kernel's output, the reference's) for a case's batch of decodes."""
    ref = case.reference()
    case.write_new_kv()
    out = torch.full_like(case.q, float("nan"))
    paged_decode_attention(case.q, case.k_cache, case.v_cache, case.meta.block_tables, case.meta.seq_lens,
                           case.scale, out, num_splits=splits)
    return out, ref


def _prefill_against_reference(case):
    """(the prefill kernel's output, the reference's) for a case's chunks."""
    ref = case.reference()
    case.write_new_kv()
    out = torch.full_like(case.q, float("nan"))
    meta = case.meta
    paged_prefill_attention(case.q, case.k_cache, case.v_cache, meta.block_tables, meta.query_start_loc,
                            meta.seq_lens, case.scale, out)
    return out, ref


@pytest.mark.parametrize("batch,max_ctx,block_size,hq,hkv,head_dim,dtype,splits", DECODE_SWEEP)
def test_decode_kernel(batch, max_ctx, block_size, hq, hkv, head_dim, dtype, splits):
    gen = torch.Generator().manual_seed(batch * max_ctx)
    specs = _decode_specs(batch, max_ctx, gen)
    case = Case(specs, block_size, hq, hkv, head_dim, dtype, num_decodes=batch)
    assert_close(*_decode_against_reference(case, splits), dtype)


def test_split_heuristic():
    assert decode_num_splits(256, 8, 4096, 132) == 1          # a big batch fills the GPU by itself
    assert decode_num_splits(1, 8, 4096, 132) == 16           # one long sequence: 256-token partitions
    assert decode_num_splits(1, 8, 100, 132) == 1             # too short to be worth splitting
    assert decode_num_splits(1, 1, 1 << 20, 132) == 64        # capped scratch


if ON_GPU:
    PREFILL_SWEEP = [
        (specs, bs, hq, hkv, d, dt)
        for specs in [
            [(1, 1)], [(2048, 2048)], [(1000, 1000), (77, 77), (3000, 512)],
            [(4097, 1), (600, 300), (129, 64), (65, 65)],
        ]
        for bs in (8, 16, 32)
        for hq, hkv in [(32, 8), (12, 12), (28, 4), (40, 8)]
        for d in (64, 128)
        for dt in (torch.bfloat16, torch.float16)
    ] + [([(700, 700), (300, 100)], 16, 8, 2, 128, torch.float32)]
else:
    PREFILL_SWEEP = [
        ([(1, 1), (70, 70), (150, 37)], 16, 4, 2, 32, torch.float16),   # fresh prompts and a cached prefix
        ([(129, 64), (65, 1)], 8, 2, 1, 64, torch.float16),              # chunk ends mid-tile; 1-token chunk
        ([(100, 100), (200, 90)], 32, 4, 4, 16, torch.float32),
        ([(260, 200), (33, 33)], 16, 8, 2, 128, torch.float32),          # 4 query tiles after a 60-token prefix
        ([(90, 90), (140, 20)], 16, 10, 2, 64, torch.float16),           # groups of 5 heads (Qwen3-14B's)
    ]


@pytest.mark.parametrize("specs,block_size,hq,hkv,head_dim,dtype", PREFILL_SWEEP)
def test_prefill_kernel(specs, block_size, hq, hkv, head_dim, dtype):
    case = Case(specs, block_size, hq, hkv, head_dim, dtype)
    assert_close(*_prefill_against_reference(case), dtype)


# An fp8 (e4m3) cache: the kernels read it into fp16 (for bf16 and fp16 models alike: see _fp16_dots,
# which also makes bf16 testable under the interpreter); the reference reads the same stored values.
FP8_MODEL_DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])


@FP8_MODEL_DTYPES
@pytest.mark.parametrize("splits", [None, 3])
def test_decode_kernel_reads_an_fp8_cache(splits, dtype):
    specs = _decode_specs(4, 300, torch.Generator().manual_seed(1))
    case = Case(specs, 16, 8, 2, 64, dtype, num_decodes=4, kv_dtype=torch.float8_e4m3fn)
    assert_close(*_decode_against_reference(case, splits), dtype)


@FP8_MODEL_DTYPES
def test_prefill_kernel_reads_an_fp8_cache(dtype):
    case = Case([(70, 70), (150, 37), (33, 1)], 16, 4, 2, 32, dtype, kv_dtype=torch.float8_e4m3fn)
    assert_close(*_prefill_against_reference(case), dtype)


@pytest.mark.skipif(not ON_GPU, reason="the Triton interpreter converts some values to fp8 wrongly (0.4863 -> 0.25 "
                                       "under triton 3.7); the GPU converts in hardware")
def test_write_kv_cache_into_fp8():
    case = Case([(40, 40), (30, 7)], 8, 2, 2, 32, torch.bfloat16, kv_dtype=torch.float8_e4m3fn)
    expected_k, expected_v = case.clean(case.k_cache), case.clean(case.v_cache)
    write_kv(case.k, case.v, expected_k, expected_v, case.meta.slot_mapping)  # torch's rounding to nearest
    k_cache, v_cache = case.clean(case.k_cache), case.clean(case.v_cache)
    write_kv_cache(case.k, case.v, k_cache, v_cache, case.meta.slot_mapping)
    assert torch.equal(k_cache.float(), expected_k.float()) and torch.equal(v_cache.float(), expected_v.float())


@pytest.mark.parametrize("dtype,num_kv_heads", [(torch.bfloat16, 3), (torch.float32, 1), (torch.float16, 8)])
def test_write_kv_cache(dtype, num_kv_heads):
    case = Case([(40, 40), (30, 7), (9, 1)], 8, num_kv_heads, num_kv_heads, 32, dtype)  # 3 heads: padded to 4
    expected_k, expected_v = case.k_cache.clone(), case.v_cache.clone()
    write_kv(case.k, case.v, expected_k, expected_v, case.meta.slot_mapping)
    write_kv_cache(case.k, case.v, case.k_cache, case.v_cache, case.meta.slot_mapping)
    assert torch.equal(case.k_cache.nan_to_num(-1.0), expected_k.nan_to_num(-1.0))
    assert torch.equal(case.v_cache.nan_to_num(-1.0), expected_v.nan_to_num(-1.0))


if ON_GPU:
    BACKEND_SWEEP = [
        (specs, nd, bs, hq, hkv, d, dt)
        for specs, nd in [
            ([(5000, 1), (1, 1), (333, 1), (2000, 2000), (900, 257)], 3),
            ([(n, 1) for n in range(1, 4000, 97)], 42),
            ([(4096, 4096)], 0),
        ]
        for bs in (16, 32)
        for hq, hkv in [(32, 8), (16, 2)]
        for d in (64, 128)
        for dt in (torch.bfloat16, torch.float16)
    ]
else:
    BACKEND_SWEEP = [
        ([(300, 1), (1, 1), (45, 1), (80, 80), (130, 33)], 3, 16, 4, 2, 32, torch.float16),
        ([(17, 1), (50, 2), (5, 5)], 1, 8, 2, 2, 16, torch.float32),
    ]


@pytest.mark.parametrize("specs,num_decodes,block_size,hq,hkv,head_dim,dtype", BACKEND_SWEEP)
def test_backend_mixed_batch(specs, num_decodes, block_size, hq, hkv, head_dim, dtype):
    case = Case(specs, block_size, hq, hkv, head_dim, dtype, num_decodes=num_decodes)
    ref = case.reference()
    out = get_backend("triton").forward(case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale)
    assert_close(out, ref, dtype)
    # The step's K/V landed in the cache: every context slot now holds data.
    slots = case.meta.slot_mapping
    assert torch.equal(case.k_cache.flatten(0, 1)[slots], case.k)
    assert torch.equal(case.v_cache.flatten(0, 1)[slots], case.v)


def test_rejects_unsupported_head_dim():
    case = Case([(10, 10)], 16, 2, 1, 48, torch.float32)
    with pytest.raises(AssertionError, match="power of two"):
        paged_prefill_attention(case.q, case.k_cache, case.v_cache, case.meta.block_tables,
                                case.meta.query_start_loc, case.meta.seq_lens, case.scale, torch.empty_like(case.q))
