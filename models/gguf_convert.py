"""Convert a llama-architecture GGUF file into a Hugging Face model directory.

transformers can load GGUF directly, but it re-parses and dequantizes the file on
every load (tens of seconds even for a 135M model). Converting once to float32
safetensors plus saved tokenizer files makes every later load take about a second.
"""

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors.numpy import save_file

from models.errors import ModelLoadError

# Bump whenever the files written here change, so cached conversions get rebuilt.
CONVERTER_VERSION = 1

# Files every finished conversion contains; used to recognise a complete model dir.
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

_REQUIRED = object()


def convert_gguf_to_hf_dir(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert the llama GGUF at `gguf_path` into a Hugging Face model directory `out_dir`.

    Writes config.json, generation_config.json, float32 model.safetensors and the
    tokenizer files. `out_dir` must not exist yet. Everything is built in a sibling
    temp dir and renamed into place, so `out_dir` is either absent or complete; if a
    concurrent converter creates `out_dir` first, its copy is kept and ours discarded.
    Raises ModelLoadError, naming the file, for anything wrong with the GGUF.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: conversion target already exists")
    reader = _open_reader(gguf_path)
    config = _llama_config(reader, gguf_path)
    tensors = _hf_tensors(reader, config, gguf_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would survive the rename; mkdir honours the umask.
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        _write_json(staging / "config.json", config)
        _write_json(
            staging / "generation_config.json",
            {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")},
        )
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        _save_tokenizer(gguf_path, reader, config, staging)
        # Without fsync a crash after the rename could expose empty files under out_dir.
        _fsync_dir(staging)
        try:
            os.rename(staging, out_dir)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another converter won the race; its result is equivalent, keep it.
        else:
            _fsync_path(out_dir.parent)
    finally:
        # After a successful rename `staging` is gone and this does nothing.
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def is_complete_model_dir(path: str | os.PathLike) -> bool:
    """Return True if `path` holds every file a finished conversion writes."""
    path = Path(path)
    return all((path / name).is_file() for name in REQUIRED_FILES)


def _open_reader(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise ModelLoadError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:
        # GGUFReader reports bad magic, truncation and garbage with assorted exception
        # types; to callers they all mean the same thing.
        raise ModelLoadError(f"{path}: not a valid GGUF file ({exc})") from exc


def _metadata(reader: gguf.GGUFReader, path: Path, key: str, default=_REQUIRED):
    field = reader.get_field(key)
    if field is None:
        if default is _REQUIRED:
            raise ModelLoadError(f"{path}: missing GGUF metadata key {key!r}")
        return default
    return field.contents()


def _float32_value(value: float) -> float:
    # GGUF stores float32; the shortest float32 repr recovers the intended decimal (1e-05, not 9.99e-06).
    return float(str(np.float32(value)))


def _llama_config(reader: gguf.GGUFReader, path: Path) -> dict:
    arch = _metadata(reader, path, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{path}: unsupported GGUF architecture {arch!r} (only 'llama' is supported)")
    rope_scaling = _metadata(reader, path, "llama.rope.scaling.type", default="none")
    if rope_scaling != "none":
        raise ModelLoadError(f"{path}: unsupported rope scaling {rope_scaling!r}")

    hidden = int(_metadata(reader, path, "llama.embedding_length"))
    n_head = int(_metadata(reader, path, "llama.attention.head_count"))
    head_dim = int(_metadata(reader, path, "llama.attention.key_length", default=hidden // n_head))
    rotary_dim = int(_metadata(reader, path, "llama.rope.dimension_count", default=head_dim))
    if rotary_dim != head_dim:
        raise ModelLoadError(f"{path}: partial rotary embeddings ({rotary_dim} of {head_dim} dims) are unsupported")
    embedding = _find_tensor(reader, path, "token_embd.weight")
    has_output = any(tensor.name == "output.weight" for tensor in reader.tensors)
    pad_id = _metadata(reader, path, "tokenizer.ggml.padding_token_id", default=None)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_metadata(reader, path, "llama.feed_forward_length")),
        "num_hidden_layers": int(_metadata(reader, path, "llama.block_count")),
        "num_attention_heads": n_head,
        # llama.cpp omits head_count_kv for models without grouped-query attention.
        "num_key_value_heads": int(_metadata(reader, path, "llama.attention.head_count_kv", default=n_head)),
        "head_dim": head_dim,
        "rms_norm_eps": _float32_value(_metadata(reader, path, "llama.attention.layer_norm_rms_epsilon")),
        # llama.cpp falls back to the original LLaMA base when freq_base is absent.
        "rope_theta": _float32_value(_metadata(reader, path, "llama.rope.freq_base", default=10000.0)),
        "max_position_embeddings": int(_metadata(reader, path, "llama.context_length")),
        # ggml lists dimensions innermost first, so the row count (vocab) is the last one.
        "vocab_size": int(embedding.shape[-1]),
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(_metadata(reader, path, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_metadata(reader, path, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": None if pad_id is None else int(pad_id),
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "attention_bias": False,
        "mlp_bias": False,
    }


def _find_tensor(reader: gguf.GGUFReader, path: Path, name: str):
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    raise ModelLoadError(f"{path}: missing tensor {name!r}")


def _hf_name(gguf_name: str, path: Path) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match is None or match[2] not in _LAYER_TENSORS:
        raise ModelLoadError(f"{path}: unknown tensor name {gguf_name!r}")
    return f"model.layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.weight"


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, hidden)
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes |= {
            prefix + "self_attn.q_proj.weight": (q_rows, hidden),
            prefix + "self_attn.k_proj.weight": (kv_rows, hidden),
            prefix + "self_attn.v_proj.weight": (kv_rows, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, q_rows),
            prefix + "mlp.gate_proj.weight": (ffn, hidden),
            prefix + "mlp.up_proj.weight": (ffn, hidden),
            prefix + "mlp.down_proj.weight": (hidden, ffn),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes


def _unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp reorders each head's rows so rotary pairs are adjacent (x0, x1), (x2, x3), ...;
    # HF's rotate_half pairs row i with row i + head_dim/2. Swapping the axes back restores that.
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _hf_tensors(reader: gguf.GGUFReader, config: dict, path: Path) -> dict[str, np.ndarray]:
    expected = _expected_shapes(config)
    tensors = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, path)
        # ggml lists dimensions innermost first; HF wants [out_features, in_features].
        shape = tuple(int(dim) for dim in reversed(tensor.shape))
        if name not in expected:
            raise ModelLoadError(f"{path}: unexpected tensor {tensor.name!r} for a "
                                 f"{config['num_hidden_layers']}-layer model")
        if expected[name] != shape:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has shape {shape}, expected {expected[name]}")
        try:
            weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot decode tensor {tensor.name!r} ({exc})") from exc
        if name.endswith("q_proj.weight"):
            weight = _unpermute_rotary_rows(weight, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weight = _unpermute_rotary_rows(weight, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(weight)
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise ModelLoadError(f"{path}: missing tensors for {', '.join(missing[:3])}{more}")
    return tensors


def _save_tokenizer(gguf_path: Path, reader: gguf.GGUFReader, config: dict, out_dir: Path) -> None:
    # Imported here because transformers takes seconds to import and only conversion needs it.
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:
        raise ModelLoadError(f"{gguf_path}: cannot build tokenizer ({exc})") from exc
    # Pin special tokens and the chat template to the GGUF metadata instead of relying on
    # how this transformers version maps them.
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(config["bos_token_id"])
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config["eos_token_id"])
    if config["pad_token_id"] is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config["pad_token_id"])
    chat_template = _metadata(reader, gguf_path, "tokenizer.chat_template", default=None)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.model_max_length = config["max_position_embeddings"]
    tokenizer.save_pretrained(out_dir)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    for entry in directory.iterdir():
        _fsync_path(entry)
    _fsync_path(directory)
