"""One decoder-only transformer for Llama, Qwen2 and Qwen3, over a flat (varlen) token batch.

The three differ only in q/k/v bias (Qwen2) and per-head q/k RMSNorm (Qwen3), both read from
ModelConfig. Projections are fused (q|k|v and gate|up) so a layer runs two large matmuls instead of
five; `load_weights` slices the HF checkpoint's separate matrices into them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.attention.metadata import AttentionMetadata
from models.config import ModelConfig
from models.errors import ModelLoadError


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    x = x + residual
    return _rms_norm(x, weight, eps), x


def _rope(q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor,
          positions: torch.Tensor):
    cos = cos_table[positions][:, None].to(q.dtype)
    sin = sin_table[positions][:, None].to(q.dtype)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _silu_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class _SmallOps:
    """The elementwise pieces of a layer. Eager, they are ~50 tiny kernels a layer, which dominate a
    small-batch GPU step; `compile_small_ops` fuses each into one kernel with torch.compile."""

    rms_norm = staticmethod(_rms_norm)
    add_rms_norm = staticmethod(_add_rms_norm)
    rope = staticmethod(_rope)
    silu_mul = staticmethod(_silu_mul)
    compiled = False


def compile_small_ops() -> None:
    """Switch every model in this process to fused (torch.compile'd) norm, RoPE and SiLU-and-mul.

    Used on CUDA; CPU runs stay eager, where they are exact against the reference by construction.
    Compiled once a process: every engine shares the wrappers, and each (dtype, width, device) an
    engine brings is one more variant of the same code. Dynamo's default of 8 variants a function is
    fewer than a process holding several models needs (the GPU tests, a large and a small engine
    with their warm-ups): past it, fullgraph compilation fails the step, so the limit is raised.
    """
    if _SmallOps.compiled:
        return
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    for name in ("rms_norm", "add_rms_norm", "rope", "silu_mul"):
        setattr(_SmallOps, name, staticmethod(torch.compile(globals()[f"_{name}"], dynamic=True, fullgraph=True)))
    _SmallOps.compiled = True


class RMSNorm(nn.Module):
    """RMSNorm in float32 with the weight applied after casting back, as the HF models do."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Normalise x, or (x + residual) returning the sum too, which the next layer reuses."""
        if residual is None:
            return _SmallOps.rms_norm(x, self.weight, self.eps)
        return _SmallOps.add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE with a cos/sin table indexed by absolute position."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.reset()

    def reset(self) -> None:
        """(Re)compute the float32 table on the module's device, e.g. after building on `meta`."""
        device = self.cos.device
        d = self.head_dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
        freqs = torch.arange(self.max_positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q [T, Hq, D], k [T, Hkv, D] rotated by their tokens' positions [T]."""
        return _SmallOps.rope(q, k, self.cos, self.sin, positions)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding, backend):
        super().__init__()
        self.cfg = cfg
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.rope = rope
        self.backend = backend
        self.scale = cfg.head_dim ** -0.5

    def forward(self, positions, x, kv_cache, meta: AttentionMetadata):
        cfg = self.cfg
        q, k, v = self.qkv_proj(x).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(-1, cfg.num_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope(positions, q, k)
        out = self.backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale)
        return self.o_proj(out.flatten(1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(_SmallOps.silu_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RotaryEmbedding, backend):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rope, backend)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, positions, x, residual, kv_cache, meta):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, kv_cache, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# HF checkpoint name -> (our fused parameter, shard index within it)
_PACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


class DecoderModel(nn.Module):
    """Embeddings, decoder layers, final norm and LM head. Parameter names follow HF's."""

    def __init__(self, cfg: ModelConfig, backend, max_positions: int):
        super().__init__()
        self.cfg = cfg
        self.rope = rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, max_positions)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, rope, backend) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [T, hidden] for a flat batch of T new tokens."""
        x = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(positions, x, residual, kv_cache, meta)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [N, vocab] for the rows that will be sampled."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, slicing q/k/v and gate/up into the fused matrices.

        Every parameter must be written exactly once and every tensor must land somewhere;
        otherwise the checkpoint does not match the config and loading fails loudly.
        """
        cfg = self.cfg
        params = dict(self.named_parameters())
        shard_sizes = {"qkv_proj": [cfg.q_size, cfg.kv_size, cfg.kv_size],
                       "gate_up_proj": [cfg.intermediate_size, cfg.intermediate_size]}
        loaded: set[tuple[str, int]] = set()
        expected: set[tuple[str, int]] = set()
        for name in params:
            fused = name.split(".")[-2]
            expected.update((name, i) for i in range(len(shard_sizes.get(fused, [None]))))
        for hf_name, tensor in weights:
            name = hf_name.removeprefix("model.")
            if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and self.lm_head is None):
                continue
            shard = 0
            parts = name.split(".")
            for i, part in enumerate(parts):
                if part in _PACKED:
                    parts[i], shard = _PACKED[part]
            target_name = ".".join(parts)
            param = params.get(target_name)
            if param is None:
                raise ModelLoadError(f"checkpoint tensor {hf_name!r} has no place in a {cfg.model_type} model")
            if parts[-2] in shard_sizes:
                sizes = shard_sizes[parts[-2]]
                dest = param.data.narrow(0, sum(sizes[:shard]), sizes[shard])
            else:
                dest = param.data
            if dest.shape != tensor.shape:
                raise ModelLoadError(f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded.add((target_name, shard))
        missing = sorted({name for name, _ in expected - loaded})
        if missing:
            raise ModelLoadError(f"checkpoint is missing weights for: {', '.join(missing[:5])}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
