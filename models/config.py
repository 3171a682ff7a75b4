"""The model architecture, read from a Hugging Face `config.json` or a built-in preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from models.errors import ModelLoadError

# model_type -> (attention has q/k/v bias, per-head RMSNorm on q and k)
_ARCHITECTURES = {
    "llama": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything the decoder needs to build itself; one class covers Llama, Qwen2 and Qwen3."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V that one token occupies across all layers."""
        return self.num_layers * 2 * self.kv_size * dtype_bytes

    @classmethod
    def from_hf_dict(cls, cfg: dict, source: str = "config.json") -> ModelConfig:
        """Validate an HF config dict and convert it; unsupported features are a clear error."""
        model_type = cfg.get("model_type")
        if model_type not in _ARCHITECTURES:
            archs = cfg.get("architectures")
            raise ModelLoadError(
                f"{source}: unsupported architecture model_type={model_type!r} "
                f"(architectures={archs}); supported: {sorted(_ARCHITECTURES)}"
            )
        rope_scaling = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
        scaling_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
        if scaling_type not in (None, "default"):
            raise ModelLoadError(f"{source}: rope_scaling type {scaling_type!r} is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
        try:
            num_heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            rope_theta = cfg.get("rope_theta", rope_scaling.get("rope_theta", 10000.0))
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            qkv_bias, qk_norm = _ARCHITECTURES[model_type]
            if model_type == "llama":
                qkv_bias = bool(cfg.get("attention_bias", False))
            return cls(
                model_type=model_type,
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(cfg.get("num_key_value_heads", num_heads)),
                head_dim=int(cfg.get("head_dim") or hidden // num_heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{source}: missing or invalid field: {e}") from e

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ModelConfig:
        """Read `config.json` from an HF model directory."""
        path = Path(model_dir) / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelLoadError(f"{path}: no config.json in the model directory") from e
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: invalid JSON: {e}") from e
        return cls.from_hf_dict(cfg, str(path))


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> dict:
    # Published Qwen3 dense configs (see QWEN3.md); kept as HF dicts so they pass the same validation.
    return {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 40960,
        "tie_word_embeddings": tied, "hidden_act": "silu", "attention_bias": False,
        "bos_token_id": 151643, "eos_token_id": [151645, 151643],
    }


PRESETS: dict[str, dict] = {
    "Qwen/Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, True),
    "Qwen/Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, True),
    "Qwen/Qwen3-4B": _qwen3(2560, 9728, 36, 32, True),
    "Qwen/Qwen3-8B": _qwen3(4096, 12288, 36, 32, False),
    "Qwen/Qwen3-14B": _qwen3(5120, 17408, 40, 40, False),
    "Qwen/Qwen3-32B": _qwen3(5120, 25600, 64, 64, False),
}


def preset_config(name: str) -> dict | None:
    """The built-in HF config for a preset name ("Qwen/Qwen3-8B" or "qwen3-8b"), or None."""
    wanted = name.lower().removeprefix("qwen/")
    for key, cfg in PRESETS.items():
        if key.lower().removeprefix("qwen/") == wanted:
            return dict(cfg)
    return None
