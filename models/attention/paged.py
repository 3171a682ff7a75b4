"""The GPU attention step over the paged cache: write the new K/V, then decode and prefill, each by
the implementation that is fastest for that phase."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.attention.metadata import AttentionMetadata
from models.attention.triton_kernels import write_kv_cache

# (q, k_cache, v_cache, meta, scale, out): fills its phase's rows of `out`. The decode rows are
# q[:num_decodes]; a prefill implementation reads every row at or after query_start_loc[num_decodes].
PhaseKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float, torch.Tensor], None]


class PagedAttention:
    """Writes the step's K/V with one Triton kernel, then runs `decode` over the leading one-token
    sequences and `prefill` over the rest (chunks that may continue a cached prefix)."""

    # Both phase kernels take their launch shapes from the host lengths, which CUDA graphs pin to
    # max_model_len, and neither reads the device from the host.
    supports_cuda_graphs = True

    def __init__(self, name: str, decode: PhaseKernel, prefill: PhaseKernel):
        self.name, self.decode, self.prefill = name, decode, prefill

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> out [T, Hq, D]."""
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        if meta.num_decodes:
            self.decode(q, k_cache, v_cache, meta, scale, out)
        if meta.num_seqs > meta.num_decodes:
            self.prefill(q, k_cache, v_cache, meta, scale, out)
        return out


def prefill_pairs(meta: AttentionMetadata) -> int:
    """(query, key) pairs of the step's prefill attention: each chunk of q new tokens attends to the
    seq_len - q tokens before it and causally to itself."""
    starts, lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
    pairs = 0
    for i in range(meta.num_decodes, meta.num_seqs):
        q = starts[i + 1] - starts[i]
        pairs += q * (lens[i] - q) + q * (q + 1) // 2
    return pairs


def by_work(small: PhaseKernel, large: PhaseKernel, min_pairs: int) -> PhaseKernel:
    """A prefill kernel that runs `large` for steps with at least `min_pairs` attention pairs and
    `small` below: FA4 is faster on long and prefix-cached prefills, but pays a fixed cost per call
    (its Python launch path) that the Triton kernel does not."""

    def prefill(q, k_cache, v_cache, meta: AttentionMetadata, scale: float, out) -> None:
        use_large = meta.scratch.get("large_prefill")
        if use_large is None:  # decided once per step, not once per layer
            use_large = meta.scratch["large_prefill"] = prefill_pairs(meta) >= min_pairs
        (large if use_large else small)(q, k_cache, v_cache, meta, scale, out)

    return prefill
