"""The Triton kernels as the two phases of PagedAttention: the GPU counterpart of the torch reference."""

from __future__ import annotations

import torch

from models.attention.metadata import AttentionMetadata
from models.attention.triton_kernels import paged_decode_attention, paged_prefill_attention


def triton_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  scale: float, out: torch.Tensor) -> None:
    nd = meta.num_decodes
    paged_decode_attention(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], scale,
                           out[:nd], max_seq_len=max(meta.seq_lens_cpu[:nd]))


def triton_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                   scale: float, out: torch.Tensor) -> None:
    # Offsets in query_start_loc are absolute, so the kernel reads q and fills out in place. The step's
    # max_query_len is the prefills' (a decode row has one query, a prefill chunk at least one).
    nd = meta.num_decodes
    paged_prefill_attention(q, k_cache, v_cache, meta.block_tables[nd:], meta.query_start_loc[nd:],
                            meta.seq_lens[nd:], scale, out, max_query_len=meta.max_query_len)
