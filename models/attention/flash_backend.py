"""FlashAttention-4 (PyPI `flash-attn-4`, imported as `flash_attn.cute`) as the two phases of PagedAttention.

FA4 reads our cache layout as it is: [num_blocks, block_size, kv_heads, head_dim] pages, a page
table per sequence (our block tables) and the used length per sequence (our seq_lens); with
`causal=True` a chunk of q_len queries against seq_len keys is aligned bottom-right, i.e. query j
sits at position seq_len - q_len + j, which is what a chunked prefill over a cached prefix needs.
It runs on Hopper and newer only (sm90+); on A100 the Triton kernels are the fast path.

Rows of a sequence's last page past its length are read (TMA loads whole pages) and masked; they
must hold finite numbers, which holds because the engine's cache is zero-initialised.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from models.attention.metadata import AttentionMetadata

MIN_CAPABILITY = (9, 0)


@functools.cache
def flash_unavailable_reason(device_index: int = 0) -> str | None:
    """None when FA4 can run on this CUDA device, else why not (for the error or the log)."""
    if not torch.cuda.is_available():
        return "FlashAttention-4 needs CUDA"
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return "FlashAttention-4 is not installed (pip install flash-attn-4)"
    capability = torch.cuda.get_device_capability(device_index)
    if capability < MIN_CAPABILITY:
        return f"FlashAttention-4 needs compute capability 9.0 or newer; this GPU has {capability[0]}.{capability[1]}"
    return None


@functools.cache
def _forward():
    # The function under the public `flash_attn_varlen_func`, called directly for its `out=`: the
    # public one is an autograd Function that allocates its own output, which would cost a copy per
    # layer. Pinned by the `flash` extra (flash-attn-4==4.0.0b36).
    from flash_attn.cute.interface import _flash_attn_fwd

    return _flash_attn_fwd


def _attend(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, max_query_len: int, max_seq_len: int,
            scale: float, out) -> None:
    _forward()(q, k_cache, v_cache, cu_seqlens_q=cu_seqlens_q, seqused_k=seq_lens, max_seqlen_q=max_query_len,
               max_seqlen_k=max_seq_len, page_table=block_tables, softmax_scale=scale, causal=True,
               num_splits=1, out=out)  # FA4 has no split-KV on sm90 (4.0.0b36 asserts)


def flash_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                 scale: float, out: torch.Tensor) -> None:
    # Decode rows lead the batch with one query each, so query_start_loc[:nd + 1] is 0..nd.
    nd = meta.num_decodes
    _attend(q[:nd], k_cache, v_cache, meta.query_start_loc[:nd + 1], meta.seq_lens[:nd], meta.block_tables[:nd],
            1, max(meta.seq_lens_cpu[:nd]), scale, out[:nd])


def flash_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  scale: float, out: torch.Tensor) -> None:
    nd, starts = meta.num_decodes, meta.query_start_loc_cpu
    first = starts[nd]
    # FA4 wants offsets from its own first row; computed once per step, not once per layer.
    cu_seqlens = meta.scratch.get("flash_prefill_cu_seqlens")
    if cu_seqlens is None:
        cu_seqlens = meta.query_start_loc[nd:] - first if first else meta.query_start_loc[nd:]
        meta.scratch["flash_prefill_cu_seqlens"] = cu_seqlens
    # The step's max_query_len is the prefills' (a decode row has one query, a prefill chunk at least one).
    _attend(q[first:], k_cache, v_cache, cu_seqlens, meta.seq_lens[nd:], meta.block_tables[nd:], meta.max_query_len,
            max(meta.seq_lens_cpu[nd:]), scale, out[first:])
