"""Attention backend built on the Triton kernels: the GPU counterpart of the torch reference."""

from __future__ import annotations

import torch

from models.attention.metadata import AttentionMetadata
from models.attention.triton_kernels import paged_decode_attention, paged_prefill_attention, write_kv_cache


class TritonBackend:
    """Writes the step's K/V with one kernel, then runs the decode kernel over the leading one-token
    sequences and the varlen prefill kernel over the rest (chunks that may continue a cached prefix)."""

    name = "triton"
    # Launch shapes depend only on the host lengths, which CUDA graphs pin to max_model_len.
    supports_cuda_graphs = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> out [T, Hq, D]."""
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            paged_decode_attention(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], scale,
                                   out[:nd], max_seq_len=max(meta.seq_lens_cpu[:nd]))
        if meta.num_seqs > nd:
            # Offsets in query_start_loc are absolute, so the prefill kernel reads q and fills out in place.
            starts = meta.query_start_loc_cpu
            max_query_len = max(starts[i + 1] - starts[i] for i in range(nd, meta.num_seqs))
            paged_prefill_attention(q, k_cache, v_cache, meta.block_tables[nd:], meta.query_start_loc[nd:],
                                    meta.seq_lens[nd:], scale, out, max_query_len=max_query_len)
        return out
