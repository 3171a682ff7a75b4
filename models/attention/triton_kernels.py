"""Triton kernels for attention over the paged KV cache: cache write, split-KV decode and varlen prefill.

Layouts match the torch reference: q/k/v are [tokens, heads, head_dim] (the head_dim axis contiguous),
caches are [num_blocks, block_size, kv_heads, head_dim], and token n of a sequence lives in cache block
block_table[n // block_size] at row n % block_size. Every kernel gathers K/V rows token by token through
the block table, so its KV tile (BLOCK_N tokens) is independent of the cache's block size.

Scores are kept in the log2 domain (scaled by softmax_scale * log2(e)) so the online softmax uses exp2.
All accumulation is fp32; probabilities are cast to the cache dtype only as the operand of the P @ V dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634

# tl.dot on NVIDIA GPUs needs every matrix dimension >= 16; the interpreter does not check this.
_MIN_DOT = 16

# Decode launch: KV tokens per loop iteration (BLOCK_N), warps and software-pipeline stages.
# Chosen by `python -m bench.decode_attention_sweep` on an H100 (see BENCHMARKS.md). Integer
# arguments that change from step to step are marked do_not_specialize below, and the metadata
# pointers (slices of one packed host->device copy, at any offset) do_not_specialize_on_alignment:
# Triton would otherwise compile variants (for == 1, multiples of 16, 16-byte alignment) at run
# time, under live traffic. They are read once per token or tile, so alignment buys nothing there.
DECODE_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
# The fewest tokens a split-KV partition is given, so each partition runs several iterations and
# the extra reduce pass stays small next to the main one.
_MIN_PARTITION = 256
_MAX_SPLITS = 64
# Prefill: query rows and KV tokens per tile.
_PREFILL_BLOCK_M = 64
_PREFILL_BLOCK_N = 64
# SM count assumed when not on a GPU (the interpreter), so the split heuristic runs as on an H100.
_DEFAULT_NUM_SMS = 132


# ------------------------------------------------------------------------------------------------
# Cache write
# ------------------------------------------------------------------------------------------------

@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, num_kv_heads,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_cs, stride_ch,
                     BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PAD: tl.constexpr):
    """One program per token: copy its [kv_heads, head_dim] K and V rows to the token's cache slot."""
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs_h < num_kv_heads)[:, None]
    dst = ((slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
           + offs_h[:, None] * stride_ch + offs_d[None, :])
    k = tl.load(k_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(v_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)  # a cast only into an fp8 cache
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Store this step's K/V [T, kv_heads, head_dim] into the paged caches at slot_mapping [T] (int64)."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _check_cache(k_cache, v_cache, num_kv_heads, head_dim)
    assert v.shape == k.shape and k.stride(-1) == 1 and v.stride(-1) == 1, "k/v must be [T, Hkv, D], D contiguous"
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, num_kv_heads,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim, HEADS_PAD=triton.next_power_of_2(num_kv_heads))


# ------------------------------------------------------------------------------------------------
# Decode: one query token per sequence, split-KV
# ------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["partition_size", "num_splits", "stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr"])
def _decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
                   part_max_ptr, part_sum_ptr, part_acc_ptr,
                   qk_scale, partition_size, num_splits, num_q_heads,
                   stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, FP16_DOTS: tl.constexpr):
    """Program (kv_head, seq, split): the GROUP query heads sharing kv_head, over one context partition.

    Programs are dispatched in grid order: a batch sorted longest-first (the scheduler sorts its
    decodes so) starts its longest contexts first, all heads of each together.

    The query heads are the M rows of both dots, padded to GROUP_PAD >= 16 because tl.dot needs
    M >= 16 on the GPU. Decode is memory bound, so the padded rows cost idle tensor-core cycles only,
    while each K/V tile is read once for the whole group; a broadcast-multiply alternative would hold
    a [GROUP, BLOCK_N, HEAD_DIM] product in registers instead.
    """
    kv_head = tl.program_id(0)  # fastest-varying: a sequence's heads are dispatched together
    seq = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * partition_size
    end = tl.minimum(start + partition_size, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    head_mask = offs_g < GROUP
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=head_mask[:, None], other=0.0)
    if FP16_DOTS:  # K/V (and p) follow q's dtype below
        q = q.to(tl.float16)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # A partition past the end of a short sequence runs no iterations and leaves max = -inf, sum = 0.
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        valid = pos < end
        block = tl.load(table + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = block * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT:
        part = (seq * num_q_heads + heads).to(tl.int64) * num_splits + split
        tl.store(part_max_ptr + part, m_i, mask=head_mask)
        tl.store(part_sum_ptr + part, l_i, mask=head_mask)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=head_mask[:, None])
    else:
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce_kernel(part_max_ptr, part_sum_ptr, part_acc_ptr, out_ptr, num_splits, num_q_heads,
                          stride_ot, stride_oh, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """Program (seq, q_head): merge the partitions' (max, sum, acc) into the normalised output row."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    split_mask = offs_s < num_splits
    part = (seq * num_q_heads + head).to(tl.int64) * num_splits + offs_s
    m = tl.load(part_max_ptr + part, mask=split_mask, other=float("-inf"))
    sums = tl.load(part_sum_ptr + part, mask=split_mask, other=0.0)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=split_mask[:, None], other=0.0)
    # Partition 0 is never empty (seq_len >= 1), so the max is finite and empty partitions weigh exp2(-inf) = 0.
    weight = tl.exp2(m - tl.max(m, 0))
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(sums * weight, 0)
    tl.store(out_ptr + seq.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
             out.to(out_ptr.dtype.element_ty))


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """How many partitions to split each decode sequence's context into.

    The main grid has num_seqs * num_kv_heads * splits programs; aim for about two per SM so the GPU
    is filled even for a small batch, but give each partition at least _MIN_PARTITION tokens (more
    splits than that only add reduce traffic) and cap the scratch at _MAX_SPLITS partials per head.
    """
    wanted = triton.cdiv(2 * num_sms, num_seqs * num_kv_heads)
    useful = triton.cdiv(max_seq_len, _MIN_PARTITION)
    return max(1, min(wanted, useful, _MAX_SPLITS))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, out: torch.Tensor,
                           max_seq_len: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of one query token per sequence over its whole cached context; writes and returns out.

    q/out [num_seqs, Hq, D]; block_tables [num_seqs, max_blocks] int32; seq_lens [num_seqs] int32
    (context length, this token included, its K/V already in the cache). max_seq_len (host int) saves a
    device read; num_splits overrides the split-KV heuristic.
    """
    num_seqs, num_q_heads, head_dim = q.shape
    if num_seqs == 0:
        return out
    num_kv_heads = k_cache.shape[2]
    group = _check_attention_args(q, out, k_cache, v_cache)
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    if num_splits is None:
        num_splits = decode_num_splits(num_seqs, num_kv_heads, max_seq_len, _num_sms(q.device))
    num_splits = min(num_splits, _MAX_SPLITS)  # the reduce kernel merges at most this many
    # Partitions are whole KV tiles; recount the splits so none is empty for the longest sequence.
    block_n = DECODE_CONFIG["BLOCK_N"]
    partition = triton.cdiv(triton.cdiv(max_seq_len, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_seq_len, partition)
    split = num_splits > 1
    if split:
        part_max = torch.empty(num_seqs, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty(num_seqs, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    else:
        part_max = part_sum = part_acc = out  # unused when SPLIT is off
    _decode_kernel[(num_kv_heads, num_seqs, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_max, part_sum, part_acc,
        scale * _LOG2E, partition, num_splits, num_q_heads,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(_MIN_DOT, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_N=block_n, SPLIT=split, DOT_PRECISION=_dot_precision(q.dtype),
        FP16_DOTS=_fp16_dots(q, k_cache),
        num_warps=DECODE_CONFIG["num_warps"], num_stages=DECODE_CONFIG["num_stages"])
    if split:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            part_max, part_sum, part_acc, out, num_splits, num_q_heads, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, SPLITS_PAD=_MAX_SPLITS, num_warps=4)
    return out


# ------------------------------------------------------------------------------------------------
# Prefill: varlen causal attention over the cached prefix and the chunk itself
# ------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "query_start_loc_ptr", "seq_lens_ptr"])
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr, out_ptr,
                    qk_scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    FP16_DOTS: tl.constexpr):
    """Program (seq, query tile, q_head): FlashAttention-style pass over the keys the tile can see.

    The sequence's queries sit at positions seq_len - q_len ... seq_len - 1. Keys before the tile's
    first query position are visible to every row, so those KV tiles run without any mask; only the
    remaining (diagonal) tiles apply the causal mask, which also keeps reads inside the context.
    """
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 >= q_len:  # the grid covers the longest chunk of the batch
        return
    seq_len = tl.load(seq_lens_ptr + seq)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    row_mask = offs_m < q_len
    tokens = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=row_mask[:, None], other=0.0)
    if FP16_DOTS:
        q = q.to(tl.float16)
    first_pos = seq_len - q_len + m0
    q_pos = first_pos + tl.arange(0, BLOCK_M)
    kv_head_off = (head // GROUP) * stride_ch
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Whole KV tiles at or before the first query position: visible to all rows, no masks needed.
    full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    for n0 in range(0, full_end, BLOCK_N):
        pos = n0 + offs_n
        block = tl.load(table + pos // BLOCK_SIZE).to(tl.int64)
        rows = block * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head_off
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :]).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :]).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # Diagonal tiles, up to the last position a real row of this tile can see. Key 0 lies in the first
    # tile processed, so every row's max is finite before it meets a tile fully masked for it.
    kv_end = tl.minimum(seq_len, first_pos + BLOCK_M)
    for n0 in range(full_end, kv_end, BLOCK_N):
        pos = n0 + offs_n
        in_ctx = pos < kv_end
        block = tl.load(table + pos // BLOCK_SIZE, mask=in_ctx, other=0).to(tl.int64)
        rows = block * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head_off
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=in_ctx[:, None], other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = in_ctx[None, :] & (pos[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=in_ctx[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(out_ptr + tokens[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                            scale: float, out: torch.Tensor, max_query_len: int | None = None) -> torch.Tensor:
    """Causal attention of varlen query chunks over their sequences' cached context; writes and returns out.

    Sequence i owns rows query_start_loc[i]:query_start_loc[i+1] of q/out [T, Hq, D] (offsets are
    absolute, so q may also hold rows of other sequences, e.g. decodes, that are left untouched);
    its queries are the last q_len of its seq_lens[i] context positions, whose K/V (the chunk's own
    included) are already in the cache. max_query_len (host int) saves a device read.
    """
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0:
        return out
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    group = _check_attention_args(q, out, k_cache, v_cache)
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    grid = (num_seqs, triton.cdiv(max_query_len, _PREFILL_BLOCK_M), num_q_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        scale * _LOG2E, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_M=_PREFILL_BLOCK_M, BLOCK_N=_PREFILL_BLOCK_N, DOT_PRECISION=_dot_precision(q.dtype),
        FP16_DOTS=_fp16_dots(q, k_cache),
        num_warps=4, num_stages=2)
    return out


# ------------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------------

def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    """The kernels take one set of strides for both caches and index head_dim as contiguous."""
    assert k_cache.dim() == 4 and k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride(), \
        "k_cache/v_cache must both be [num_blocks, block_size, kv_heads, head_dim] with equal strides"
    assert k_cache.shape[2:] == (num_kv_heads, head_dim), \
        f"cache is [.., {k_cache.shape[2]}, {k_cache.shape[3]}] but K/V have {num_kv_heads} heads of {head_dim}"
    assert k_cache.stride(-1) == 1, "cache head_dim axis must be contiguous"
    assert head_dim >= _MIN_DOT and head_dim & (head_dim - 1) == 0, \
        f"head_dim must be a power of two >= {_MIN_DOT} (tl.arange and tl.dot sizes), got {head_dim}"


def _check_attention_args(q: torch.Tensor, out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> int:
    """Validate shapes/dtypes shared by decode and prefill; returns the GQA group size Hq // Hkv."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    _check_cache(k_cache, v_cache, num_kv_heads, head_dim)
    assert num_q_heads % num_kv_heads == 0, f"{num_q_heads} query heads not a multiple of {num_kv_heads} KV heads"
    assert k_cache.dtype in (q.dtype, torch.float8_e4m3fn), f"q is {q.dtype} but the cache is {k_cache.dtype}"
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32), f"unsupported dtype {q.dtype}"
    assert out.shape == q.shape and q.stride(-1) == 1 and out.stride(-1) == 1, \
        "q/out must be the same [T, Hq, D] shape with head_dim contiguous"
    return num_q_heads // num_kv_heads


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact (FMA) dots; the GPU default, tf32, would cost about 1e-3 relative error."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _fp16_dots(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the dots run in fp16 rather than q's bf16: for an fp8 (e4m3) cache, whose values the GPU
    converts to fp16 in one instruction per pair (sm89+), while Triton makes bf16 from that fp16 with
    further conversions per value, on every K/V load. fp16 holds e4m3 exactly, and q (normed, rotated)
    and p (in [0, 1]) fit its range with more mantissa than bf16; the dots accumulate in fp32 either way."""
    return k_cache.dtype == torch.float8_e4m3fn and q.dtype == torch.bfloat16


def _num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of the GPU that runs the kernels (cached by torch)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_NUM_SMS
