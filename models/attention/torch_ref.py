"""Reference attention in plain torch: runs on CPU and GPU, and is what the fast kernels are tested against."""

from __future__ import annotations

import torch

from models.attention.metadata import AttentionMetadata


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store this step's K/V [T, kv_heads, head_dim] into the paged cache at their slots."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, Q, Hq, D], k/v [B, L, Hkv, D], mask [B, Q, L] (True = visible) -> [B, Q, Hq, D].

    Query heads are grouped over their shared KV head (GQA) instead of repeating K/V.
    """
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.view(b, nq, hkv, hq // hkv, d)
    scores = torch.einsum("bqhgd,blhd->bhgql", qg.float(), k.float()) * scale
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhgql,blhd->bqhgd", probs, v.float())
    return out.reshape(b, nq, hq, d).to(q.dtype)


class TorchReferenceBackend:
    """Gathers each sequence's context from its blocks and runs masked softmax attention.

    Decodes are batched into one padded gather; prefills (few per step) are handled one by one.
    """

    name = "torch"
    supports_cuda_graphs = False  # its decode gather is sized by the longest context: too big at max_model_len

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> out [T, Hq, D]."""
        write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        block_size = k_cache.shape[1]
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            max_blocks = (max(meta.seq_lens_cpu[:nd]) + block_size - 1) // block_size
            tables = meta.block_tables[:nd, :max_blocks]
            kc = k_cache[tables].flatten(1, 2)  # [nd, max_blocks * block_size, Hkv, D]
            vc = v_cache[tables].flatten(1, 2)
            visible = torch.arange(kc.shape[1], device=q.device)[None, :] < meta.seq_lens[:nd, None]
            out[:nd] = _attend(q[:nd, None], kc, vc, visible[:, None, :], scale)[:, 0]
        for i in range(nd, meta.num_seqs):
            start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            ctx = meta.seq_lens_cpu[i]
            blocks = meta.block_tables[i, : (ctx + block_size - 1) // block_size]
            kc = k_cache[blocks].flatten(0, 1)[:ctx]
            vc = v_cache[blocks].flatten(0, 1)[:ctx]
            nq = end - start
            # Query j sits at position ctx - nq + j and sees every key up to and including itself.
            q_pos = torch.arange(ctx - nq, ctx, device=q.device)
            visible = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
            out[start:end] = _attend(q[None, start:end], kc[None], vc[None], visible[None], scale)[0]
        return out
