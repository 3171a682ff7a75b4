"""Host lists to device tensors without stalling the host."""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`. On CUDA the list goes through pinned memory, so the copy is
    queued on the current stream and the host returns at once (a copy from pageable memory may wait)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)
