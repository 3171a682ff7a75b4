"""Weight quantization of the decoder's projections: bitsandbytes LLM.int8 and NF4, and FP8.

`quantize_model` runs once, after the weights are loaded by any loader (safetensors, GGUF, dummy):
every nn.Linear inside the decoder layers (fused q|k|v, o, fused gate|up, down) is replaced by a
quantized one made from its weight, and the 16-bit weight is freed. Embeddings and the LM head keep
the model's dtype: they are a small share of a large model and the logits are the most sensitive
product of all.

What each mode costs (BENCHMARKS.md, an H200 with Qwen3-8B): memory, not time. LLM.int8's decode
steps took 4-25x as long as bf16's (host-bound: a projection call is ~0.4 ms of host time for
~0.03 ms of GPU time), NF4's 0.88x at batch 1 and 1.3-1.8x from batch 64, FP8's
1.1-1.4x (its per-token activation quantization is a few unfused kernels per projection).
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("none", "bnb-8bit", "bnb-4bit", "fp8")
# LLM.int8 finds the outlier columns of each batch with a host sync (`outliers.any()`, `argwhere`),
# which a CUDA graph cannot capture; these modes run their decode steps eagerly.
EAGER_ONLY = frozenset({"bnb-8bit"})

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_MIN_SCALE = 1e-12  # an all-zero row (or column) gets this scale instead of a division by zero


def _bitsandbytes():
    # Imported on use: the package is optional, and large (CUDA binaries) where it is installed.
    try:
        import bitsandbytes
    except ImportError as e:
        raise ValueError("this quantization needs the bitsandbytes package: "
                         "pip install bitsandbytes==0.50.2") from e
    return bitsandbytes


class QuantizedLinear(nn.Module):
    """A linear layer y = x W^T + b whose W is stored quantized (as buffers, so weight accounting and
    `.to()` see it). `dequantized_weight()` is the W the layer computes with, in float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias  # kept in the model dtype: a handful of values per layer

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """LLM.int8 (bitsandbytes): int8 weights with one absmax scale per output row; activations are
    quantized per token at run time, except the columns holding a value of magnitude >= `threshold`
    (the outlier features), which are multiplied in fp16 against the dequantized weight columns."""

    def __init__(self, linear: nn.Linear, threshold: float = 6.0):
        super().__init__(linear)
        self._functional = _bitsandbytes().functional
        # bitsandbytes' int8 kernels read fp16 (as bnb.matmul does, for any model dtype).
        weight, scale, _ = self._functional.int8_vectorwise_quant(linear.weight.data.to(torch.float16))
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.threshold = threshold

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * (self.weight_scale[:, None] / 127.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op layer under bnb.matmul, called as bnb.matmul calls it (activations quantized from
        # fp16, outlier columns and output in x's dtype) but directly: bnb.matmul logs a warning on
        # every call whose input is not fp16, and wraps an autograd Function inference never needs.
        xq, x_scale, outliers = self._functional.int8_vectorwise_quant(x.to(torch.float16), self.threshold)
        out, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(x, xq, self.weight, x_scale, self.weight_scale,
                                                              outliers, self.bias)
        return out


class NF4Linear(QuantizedLinear):
    """NF4 (bitsandbytes, QLoRA's 4-bit NormalFloat): two weights a byte, one float32 absmax per block
    of 64, no double quantization (HF's default). The matmul runs in the model dtype (bf16 on CUDA):
    bitsandbytes' fused 4-bit kernel for small batches, dequantize-then-matmul for large ones."""

    BLOCKSIZE = 64

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self._bnb = _bitsandbytes()
        packed, state = self._bnb.functional.quantize_4bit(linear.weight.data, blocksize=self.BLOCKSIZE,
                                                           quant_type="nf4", compress_statistics=False,
                                                           quant_storage=torch.uint8)
        self.register_buffer("weight", packed)
        self.register_buffer("absmax", state.absmax)
        self.quant_state = state  # carries the shape, code and compute dtype (the model's) for the kernel

    def _apply(self, fn, recurse=True):
        # `.to()` and friends replace the buffers: the kernel's state must follow them.
        super()._apply(fn, recurse)
        self.quant_state.absmax = self.absmax
        self.quant_state.code = self.quant_state.code.to(self.absmax.device)
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return self._bnb.functional.dequantize_4bit(self.weight, self.quant_state).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._bnb.matmul_4bit(x, self.weight.t(), quant_state=self.quant_state, bias=self.bias)


def quantize_rows_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn values and float32 scales [rows, 1] with x ~= values * scales, one scale per row
    (its absmax maps to FP8_MAX)."""
    scale = (x.abs().amax(-1, keepdim=True).float() / FP8_MAX).clamp_min(_MIN_SCALE)
    values = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return values, scale


class FP8Linear(QuantizedLinear):
    """FP8 (e4m3): weights with one scale per output channel, activations with one scale per token
    computed at run time (dynamic), multiplied by `torch._scaled_mm` with row-wise scales, which
    accumulates in float32 and writes bf16."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        # _scaled_mm's layout rules: both of the weight's dimensions multiples of 16.
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"fp8 needs layer dimensions that are multiples of 16, got a "
                             f"{self.out_features}x{self.in_features} projection")
        weight, scale = quantize_rows_fp8(linear.weight.data)
        # Stored [out, in] row-major: its transpose is the column-major [in, out] operand _scaled_mm wants.
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.view(1, -1))

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.view(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, x_scale = quantize_rows_fp8(x)
        # Row-wise scaling writes bf16 only; the bias is added after, in the model's dtype.
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16).to(x.dtype)
        return out if self.bias is None else out + self.bias


def check_fp8_device(device: torch.device) -> None:
    """Raise ValueError unless `torch._scaled_mm` with row-wise scales runs on `device`: on CUDA a
    GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); elsewhere whatever this build
    of torch supports (torch 2.13's CPU build does)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                             f"{torch.cuda.get_device_name(device)} is {major}.{minor}: use bnb-8bit or bnb-4bit")
    a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
    ones = torch.ones(16, 1, device=device)
    try:
        torch._scaled_mm(a, a.t(), scale_a=ones, scale_b=ones.view(1, -1), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"fp8 needs torch._scaled_mm with row-wise scales, which torch {torch.__version__} "
                         f"does not run on {device.type} ({str(e).splitlines()[0]})") from e


_KINDS = {"bnb-8bit": Int8Linear, "bnb-4bit": NF4Linear, "fp8": FP8Linear}


def check_quantization(mode: str, device: torch.device) -> None:
    """Raise ValueError if `mode` cannot run here: an unknown mode, bitsandbytes missing, or fp8 on a
    device without row-wise `torch._scaled_mm`. Cheap: the loader calls it before reading weights."""
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {MODES}, got {mode!r}")
    if mode.startswith("bnb-"):
        _bitsandbytes()
    elif mode == "fp8":
        check_fp8_device(device)


def quantize_model(model: nn.Module, mode: str) -> None:
    """Replace every nn.Linear inside `model.layers` by its quantized version, in place (no-op for
    "none"). The 16-bit weights are freed, and on CUDA their memory is returned to the driver, so
    that the KV cache sized afterwards from the free memory gets it."""
    device = next(model.parameters()).device
    check_quantization(mode, device)
    if mode == "none":
        return
    kind = _KINDS[mode]
    with torch.no_grad():
        for parent in list(model.layers.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, kind(child))  # the last reference to child's weight goes
    if device.type == "cuda":
        _repack(model.layers, device)


def _repack(layers: nn.Module, device: torch.device) -> None:
    """Give the 16-bit weights' memory back to the driver. The quantized tensors were allocated while
    the weights they replace were still alive, into the gaps of the caching allocator's shared
    segments (where tensors under 10 MB live: most of a small model's), and a segment only goes back
    once it is wholly empty; so on Qwen3-0.6B the KV cache gained nothing (H200, 2026-12-03). Moving
    the quantized layers out and back packs them into fresh segments."""
    layers.to("cpu")
    torch.cuda.empty_cache()
    layers.to(device)


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take: its parameters, plus the quantized layers' stored weights and
    scales (buffers, not parameters). Shared parameters (tied embeddings) count once."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            total += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
    return total
