"""Reference attention in plain torch: runs on CPU and GPU, and is what the fast kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.attention.metadata import AttentionMetadata


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store this step's K/V [T, kv_heads, head_dim] into the paged cache at their slots."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    for new, cache in ((k, k_cache), (v, v_cache)):
        new = new.to(cache.dtype)  # rounded to nearest when the cache is fp8
        if cache.dtype == torch.float8_e4m3fn:  # index_copy_ has no fp8 kernel on the CPU: copy the bytes
            new, cache = new.view(torch.uint8), cache.view(torch.uint8)
        cache.view(num_slots, *cache.shape[2:]).index_copy_(0, slot_mapping, new)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q [B, Q, Hq, D], k/v [B, L, Hkv, D], mask [B, Q, L] (True = visible; None = causal) -> [B, Q, Hq, D].

    torch's fused SDPA groups the query heads over their shared KV head (GQA) itself.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=None if mask is None else mask[:, None],
                                         is_causal=mask is None, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


_DECODE_GROUP = 8


class TorchReferenceBackend:
    """Gathers each sequence's context from its blocks and runs masked softmax attention.

    Decodes are batched in padded groups; prefills (few per step) are handled one by one.
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
        # Decodes are gathered in groups of similar context length, so padding to the longest
        # context of a group wastes little copying; each group is one batched attention call.
        lens = meta.seq_lens_cpu[:nd]
        order = sorted(range(nd), key=lens.__getitem__)
        for g in range(0, nd, _DECODE_GROUP):
            rows = order[g:g + _DECODE_GROUP]
            idx = torch.tensor(rows, device=q.device)
            max_blocks = (lens[rows[-1]] + block_size - 1) // block_size
            tables = meta.block_tables[idx, :max_blocks]
            kc = k_cache[tables].flatten(1, 2).to(q.dtype)  # [rows, max_blocks * block_size, Hkv, D]
            vc = v_cache[tables].flatten(1, 2).to(q.dtype)
            visible = torch.arange(kc.shape[1], device=q.device)[None, :] < meta.seq_lens[idx, None]
            out[idx] = _attend(q[idx, None], kc, vc, visible[:, None, :], scale)[:, 0]
        for i in range(nd, meta.num_seqs):
            start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
            ctx = meta.seq_lens_cpu[i]
            nq = end - start
            if nq == ctx and k_cache.dtype == q.dtype:  # a whole prompt: its new K/V are the context, causal
                out[start:end] = _attend(q[None, start:end], k[None, start:end], v[None, start:end], None, scale)[0]
                continue
            blocks = meta.block_tables[i, : (ctx + block_size - 1) // block_size]
            kc = k_cache[blocks].flatten(0, 1)[:ctx].to(q.dtype)  # as stored: an fp8 cache's values
            vc = v_cache[blocks].flatten(0, 1)[:ctx].to(q.dtype)
            # Query j sits at position ctx - nq + j and sees every key up to and including itself.
            q_pos = torch.arange(ctx - nq, ctx, device=q.device)
            visible = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
            out[start:end] = _attend(q[None, start:end], kc[None], vc[None], visible[None], scale)[0]
        return out
