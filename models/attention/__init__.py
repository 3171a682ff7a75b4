"""Attention over the paged KV cache: one metadata type, interchangeable backends."""

from models.attention.metadata import AttentionMetadata
from models.attention.torch_ref import TorchReferenceBackend

__all__ = ["AttentionMetadata", "TorchReferenceBackend", "get_backend"]


def get_backend(name: str = "auto", device_type: str = "cpu"):
    """The attention backend called `name`: "torch" is the reference that runs everywhere, "triton"
    the GPU kernels (imported only when asked for, so installs without triton still import this
    package), "auto" the kernels on CUDA when triton is installed and the reference otherwise."""
    if name == "auto":
        import importlib.util
        name = "triton" if device_type == "cuda" and importlib.util.find_spec("triton") else "torch"
    if name == "torch":
        return TorchReferenceBackend()
    if name == "triton":
        from models.attention.triton_backend import TritonBackend

        return TritonBackend()
    raise ValueError(f"unknown attention backend {name!r}; available: auto, torch, triton")
