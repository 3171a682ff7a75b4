"""Find a model by name, build the decoder, and fill it: HF safetensors, GGUF, or dummy weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.config import ModelConfig, preset_config
from models.decoder import DecoderModel
from models.errors import ModelLoadError
from models.quantization import check_quantization, quantize_model

EMBEDDED = "embedded"


def resolve_model_dir(model: str) -> Path:
    """A local HF-style directory for `model`: "embedded", a directory, a .gguf file, or a hub id."""
    if model == EMBEDDED:
        from models.embedded import embedded_model_dir
        return embedded_model_dir()
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf":
        from models.embedded import converted_gguf_dir
        return converted_gguf_dir(path)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"model {model!r}: not a model directory, a .gguf file or a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # the hub is unreachable offline; say so instead of a stack of HTTP errors
        raise ModelLoadError(f"model {model!r}: not a local directory, and downloading it from the hub failed "
                             f"({type(e).__name__}: {e})") from e


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index}: invalid safetensors index ({e})") from e
        return [model_dir / s for s in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights found")
    return files


def _iter_safetensors(files: list[Path], dtype: torch.dtype):
    from safetensors import SafetensorError, safe_open
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    yield name, f.get_tensor(name).to(dtype)
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{file}: cannot read weights ({e})") from e


def _init_dummy(model: DecoderModel, seed: int) -> None:
    # Small values keep activations finite through many layers, like vLLM's dummy load format.
    for i, (name, p) in enumerate(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            gen = torch.Generator(device=p.device).manual_seed(seed + i)
            p.data.uniform_(-1e-2, 1e-2, generator=gen)


def load_model(model: str, *, load_format: str = "auto", dtype: torch.dtype, device: torch.device,
               backend, max_model_len: int | None = None, seed: int = 0, tokenizer: str | None = None,
               quantization: str = "none"):
    """Build and load a model. Returns (DecoderModel, ModelConfig, tokenizer or None, max_model_len).

    load_format "dummy" takes the architecture from a built-in Qwen3 preset (or a local config.json)
    and random weights, for benchmarks where no real weights can be had. `tokenizer` (a model
    directory, hub id or 'embedded') replaces the model's own, e.g. to send text to dummy weights.
    `quantization` (models.quantization.MODES) quantizes the decoder layers' projections once loaded.
    """
    if load_format not in ("auto", "dummy"):
        raise ModelLoadError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
    check_quantization(quantization, device)
    model_dir = None
    if load_format == "dummy" and preset_config(model) is not None:
        cfg = ModelConfig.from_hf_dict(preset_config(model), f"preset {model}")
    else:
        model_dir = resolve_model_dir(model)
        cfg = ModelConfig.from_model_dir(model_dir)
    max_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
    # Built on `meta` and materialised once, in the target dtype on the target device.
    with torch.device("meta"):
        net = DecoderModel(cfg, backend, max_positions=max_len).to(dtype)
    net = net.to_empty(device=device).eval()
    net.rope.reset()
    if load_format == "dummy":
        _init_dummy(net, seed)
    else:
        net.load_weights(_iter_safetensors(_safetensors_files(model_dir), dtype))
    quantize_model(net, quantization)
    tok = model_tokenizer(model, load_format, tokenizer, model_dir=model_dir)
    if tok is not None and tokenizer is not None and len(tok) > cfg.vocab_size:
        raise ModelLoadError(f"{tokenizer}: its {len(tok)} tokens do not fit the model's vocabulary "
                             f"of {cfg.vocab_size}")
    return net, cfg, tok, max_len


def model_tokenizer(model: str, load_format: str = "auto", tokenizer: str | None = None,
                    model_dir: Path | None = None):
    """The tokenizer load_model gives the model: `tokenizer`'s if named, else the model directory's
    (`model_dir` when the caller has resolved it already); None for dummy weights of a built-in preset."""
    if tokenizer is not None:
        tok = load_tokenizer(resolve_model_dir(tokenizer))
        if tok is None:
            raise ModelLoadError(f"{tokenizer}: no tokenizer files there")
        return tok
    if model_dir is None:
        if load_format == "dummy" and preset_config(model) is not None:
            return None
        model_dir = resolve_model_dir(model)
    return load_tokenizer(model_dir)


def load_tokenizer(model_dir: Path):
    """The model directory's tokenizer (with its chat template), or None when it has none."""
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from e
