"""The K and V tensors behind the block pool, and how many blocks a memory budget buys.

They live with the model (its layers read and write them); kv_cache/ only hands out block ids.
"""

from __future__ import annotations

import torch

from models.config import ModelConfig


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V bytes of one block across all layers."""
    return block_size * cfg.kv_bytes_per_token(torch.empty((), dtype=dtype).element_size())


def num_blocks_for_budget(cfg: ModelConfig, block_size: int, dtype: torch.dtype, budget_bytes: int) -> int:
    """How many whole blocks fit in `budget_bytes`."""
    return int(budget_bytes // bytes_per_block(cfg, block_size, dtype))


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One preallocated tensor, viewed per layer as (K, V), each [num_blocks, block_size, kv_heads, head_dim]."""
    storage = torch.zeros(cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                          dtype=dtype, device=device)
    return [(storage[i, 0], storage[i, 1]) for i in range(cfg.num_layers)]
