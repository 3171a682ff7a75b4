"""Attention over the paged cache: one metadata type, interchangeable backends."""

from models.attention.metadata import AttentionMetadata
from models.attention.torch_ref import TorchReferenceBackend

__all__ = ["AttentionMetadata", "TorchReferenceBackend", "get_backend", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton", "flash")
# "auto" where FlashAttention-4 runs (sm90+, installed), from the per-phase H200 measurements in
# BENCHMARKS.md (FlashAttention-4 against the Triton kernels): Triton decodes (FA4 has no split-KV on
# sm90 and is 1.2-1.8x slower from batch 64 up); prefill steps of at least this many attention pairs
# go to FA4 (0.53-0.7x the Triton time on 2-4M pairs), smaller ones to Triton (FA4's ~85 us per
# call floor made it 2x slower on 16 x 128-token prompts).
AUTO_FLASH_PREFILL_PAIRS = 2_000_000


def get_backend(name: str = "auto", device_type: str = "cpu", device_index: int = 0, fp8_cache: bool = False):
    """The attention backend called `name`.

    "torch" is the reference that runs everywhere; "triton" the Triton kernels for both phases;
    "flash" FlashAttention-4 for both (sm90+); "DECODE:PREFILL" (e.g. "triton:flash") picks each
    phase's kernels; "auto" is the reference off CUDA or without triton, Triton decode and
    size-picked prefill (AUTO_FLASH_PREFILL_PAIRS) where FA4 can run, and Triton otherwise. The GPU
    kernels are imported only when asked for, so installs without triton or flash-attn-4 still
    import this package. With `fp8_cache` (an fp8 KV cache) only the torch and Triton kernels
    qualify: FlashAttention-4 reads the model's dtype, and Triton converts fp8 on sm89 and newer.
    """
    import importlib.util

    if name == "auto":
        if device_type != "cuda" or importlib.util.find_spec("triton") is None:
            return TorchReferenceBackend()
        from models.attention.flash_backend import flash_unavailable_reason

        if not fp8_cache and flash_unavailable_reason(device_index) is None:
            from models.attention.paged import PagedAttention, by_work

            (triton_decode, triton_prefill), (_, flash_prefill) = _kernels("triton"), _kernels("flash")
            return PagedAttention("auto (triton decode; prefill: triton, flash from 2M pairs)", triton_decode,
                                  by_work(triton_prefill, flash_prefill, AUTO_FLASH_PREFILL_PAIRS))
        name = "triton"
    if name == "torch":
        return TorchReferenceBackend()
    phases = name.split(":")
    phases = phases * 2 if len(phases) == 1 else phases
    if len(phases) != 2 or not set(phases) <= {"triton", "flash"}:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}, "
                         "or DECODE:PREFILL from triton and flash (e.g. triton:flash)")
    if fp8_cache:
        _check_fp8_cache(name, phases, device_type, device_index)
    if "flash" in phases:
        from models.attention.flash_backend import flash_unavailable_reason

        reason = flash_unavailable_reason(device_index) if device_type == "cuda" else "FlashAttention-4 needs CUDA"
        if reason is not None:
            raise ValueError(f"attention backend {name!r}: {reason}")
    from models.attention.paged import PagedAttention

    return PagedAttention(phases[0] if phases[0] == phases[1] else name, decode=_kernels(phases[0])[0],
                          prefill=_kernels(phases[1])[1])


def _check_fp8_cache(name: str, phases: list[str], device_type: str, device_index: int) -> None:
    if "flash" in phases:
        raise ValueError(f"attention backend {name!r} cannot read an fp8 KV cache: use triton (or auto)")
    if device_type == "cuda":
        import torch

        if torch.cuda.get_device_capability(device_index) < (8, 9):
            raise ValueError(f"an fp8 KV cache needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                             f"{torch.cuda.get_device_name(device_index)} is "
                             f"{torch.cuda.get_device_capability(device_index)}")


def _kernels(impl: str):
    """(decode, prefill) phase kernels of "triton" or "flash", imported on first use."""
    if impl == "triton":
        from models.attention.triton_backend import triton_decode, triton_prefill
        return triton_decode, triton_prefill
    from models.attention.flash_backend import flash_decode, flash_prefill
    return flash_decode, flash_prefill
