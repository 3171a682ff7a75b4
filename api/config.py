"""Everything that fixes a server, as one frozen dataclass whose fields give `python -m api` its flags.

Engine settings take their defaults from `EngineConfig`, so a default is written once. A preset
(`--config system1`, a JSON file under configs/) sets several fields at once; flags given explicitly
override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from models.quantization import MODES as QUANTIZATION_MODES
from scheduler.engine import EngineConfig

logger = logging.getLogger("switchyard")

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}


def _field(default, help: str, **metadata):
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _engine(name: str, help: str, **metadata):
    return _field(_ENGINE_DEFAULTS[name], help, **metadata)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """A server: its models and engines, its HTTP limits and its request policy."""

    # ---- models
    model: str = _engine("model", "large model: 'embedded', an HF directory, a .gguf file or a hub id")
    small_model: str | None = _field(None, "small model (default: the large model serves both roles)")
    served_model_name: str | None = _field(None, "the name clients see for the large model (default: from --model)")
    small_served_model_name: str | None = _field(None, "the name clients see for the small model")
    load_format: str = _engine("load_format", "'dummy': random weights in a Qwen3 preset's shapes",
                               choices=("auto", "dummy"))
    tokenizer: str | None = _engine("tokenizer", "use this model's tokenizer (a directory or 'embedded'), e.g. "
                                                 "with --load-format dummy, whose weights come without one")
    policy: str | None = _field(None, "JSON file overriding the per-task policy (see tasks/policy.py)")
    # ---- engines
    dtype: str | None = _engine("dtype", "weights and KV cache dtype (default: float32 on CPU, bfloat16 on CUDA)",
                                choices=("float32", "bfloat16", "float16"))
    device: str | None = _engine("device", "the large model's device, e.g. cuda:0 (default: cuda if present)")
    small_device: str | None = _field(None, "the small model's device (default: the large model's)")
    gpu_memory_utilization: float = _engine("gpu_memory_utilization",
                                            "fraction of the GPU's memory in use once the large model's KV cache "
                                            "exists")
    small_gpu_memory_utilization: float | None = _field(
        None, "the same for the small model (default: 0.45 on a GPU shared with the large one, else as the large)")
    kv_cache_gib: float | None = _engine("kv_cache_gib", "fixed KV cache size per model, GiB (default: 1 on CPU, "
                                                         "measured on CUDA)")
    max_model_len: int | None = _engine("max_model_len", "tokens per sequence, prompt and output (default: the "
                                                          "model's limit)")
    block_size: int = _engine("block_size", "tokens per KV cache block")
    kv_cache_dtype: str = _engine("kv_cache_dtype", "auto: the model's dtype; fp8: float8 e4m3 (twice the tokens "
                                                    "per GiB, values rounded to 3 mantissa bits; sm89+ on CUDA)",
                                  choices=("auto", "fp8"))
    max_num_seqs: int = _engine("max_num_seqs", "sequences running at once per engine")
    max_num_batched_tokens: int = _engine("max_num_batched_tokens", "tokens computed per engine step")
    prefix_caching: bool = _engine("enable_prefix_caching", "reuse the KV blocks of shared prompt prefixes")
    speculative_ngram: int = _engine("speculative_ngram", "speculative decoding: greedy requests draft up to this "
                                                          "many tokens a step by n-gram lookup in their own tokens, "
                                                          "checked by the model in the same step (outputs unchanged; "
                                                          "steps then run without overlap); 0: off")
    attention_backend: str = _engine(
        "attention_backend", "torch (reference), triton, flash (FlashAttention-4, sm90+), or DECODE:PREFILL such as "
        "triton:flash; auto: Triton decode and FA4 prefill where FA4 runs, Triton elsewhere on CUDA, torch on CPU")
    enforce_eager: bool = _engine("enforce_eager", "CUDA: no CUDA graphs, no torch.compile")
    engine_process: bool = _field(False, "run each engine in a process of its own (its own GIL), behind a pipe, "
                                         "instead of on a thread of the server's process")
    quantization: str = _engine("quantization", "the large model's decoder weights: bnb-8bit (LLM.int8) or "
                                                "bnb-4bit (NF4) save memory at a speed cost; fp8 needs sm89+",
                                choices=QUANTIZATION_MODES)
    small_quantization: str | None = _field(None, "the same for the small model (default: the large model's)",
                                            choices=QUANTIZATION_MODES)
    # ---- HTTP
    host: str = _field("127.0.0.1", "address to listen on")
    port: int = _field(8000, "port to listen on")
    api_key: str | None = _field(os.environ.get("SWITCHYARD_API_KEY"),
                                 "require 'Authorization: Bearer KEY' (default: $SWITCHYARD_API_KEY)")
    public_paths: tuple[str, ...] = _field(("/health",), "routes served without the API key", nargs="*")
    max_body_bytes: int = _field(4 << 20, "largest request body, bytes")
    max_completions_per_request: int = _field(64, "prompts x n in one request")
    max_queued_prompts: int = _field(4096, "completions in flight across all requests; beyond, 429")
    request_timeout: float = _field(600.0, "seconds a request may take before it fails with 504")
    trust_request_chat_template: bool = _field(False, "let chat requests send their own 'chat_template' "
                                                      "(rendered in a sandboxed process)")
    timeout_keep_alive: int = _field(5, "seconds an idle connection stays open")
    header_timeout: float = _field(10.0, "seconds a connection may take to send its request head")
    body_timeout: float = _field(30.0, "seconds a request may take to send its body")
    limit_concurrency: int = _field(2048, "connections plus requests at once; beyond, new ones get 503")
    graceful_shutdown_timeout: float = _field(15.0, "on SIGTERM, seconds in-flight requests get to finish "
                                                    "before they are aborted")
    access_log: bool = _field(False, "log every request")

    @property
    def has_small_engine(self) -> bool:
        """A small model other than the large one: a second engine (else the large one serves both roles)."""
        return bool(self.small_model) and self.small_model != self.model

    @property
    def two_engines_share_a_device(self) -> bool:
        return self.has_small_engine and self.small_device in (None, self.device)

    def engine_config(self, small: bool) -> EngineConfig:
        """The EngineConfig of the large or the small model."""
        if small:
            shared = self.two_engines_share_a_device
            utilization = self.small_gpu_memory_utilization or (0.45 if shared else self.gpu_memory_utilization)
            model, device = self.small_model, self.small_device or self.device
            quantization = self.small_quantization or self.quantization
        else:
            model, device, utilization = self.model, self.device, self.gpu_memory_utilization
            quantization = self.quantization
        return EngineConfig(model=model, load_format=self.load_format, tokenizer=self.tokenizer, dtype=self.dtype,
                            device=device, gpu_memory_utilization=utilization, kv_cache_gib=self.kv_cache_gib,
                            max_model_len=self.max_model_len, block_size=self.block_size,
                            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                            enable_prefix_caching=self.prefix_caching, attention_backend=self.attention_backend,
                            enforce_eager=self.enforce_eager, quantization=quantization,
                            kv_cache_dtype=self.kv_cache_dtype, speculative_ngram=self.speculative_ngram)


def _type_of(field: dataclasses.Field):
    kind = field.type.split(" | ")[0]
    return {"int": int, "float": float, "str": str, "tuple[str, ...]": str}[kind]


# Keys a preset may hold besides ServerConfig fields.
_PRESET_ONLY = {"description": "str", "speculative": "bool"}
_KINDS = {"str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}


def load_preset(name: str) -> dict:
    """The settings of a preset: `name` is one under configs/ (system1 ... system5) or a JSON file.

    Its keys are ServerConfig fields (as in `python -m api --help`, with _ for -) plus `description`
    and `speculative` (said at start); a relative `policy` path is read from the preset's
    directory. Raises ValueError naming the file and the key for an unknown key or a value of the
    wrong type.
    """
    path = Path(name) if name.endswith(".json") else PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        raise ValueError(f"preset {name!r}: {path} does not exist (presets: {known}; or a .json file)")
    try:
        preset = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"preset {path}: {e}") from e
    if not isinstance(preset, dict):
        raise ValueError(f"preset {path}: expected a JSON object of settings")
    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    unknown = sorted(set(preset) - set(fields) - set(_PRESET_ONLY))
    if unknown:
        raise ValueError(f"preset {path}: unknown keys {unknown}; a preset holds ServerConfig fields "
                         f"(python -m api --help) and {sorted(_PRESET_ONLY)}")
    for key, value in preset.items():
        kind, _, optional = (fields[key].type if key in fields else _PRESET_ONLY[key]).partition(" | ")
        choices = fields[key].metadata.get("choices") if key in fields else None
        if value is None and optional:
            continue
        if not _KINDS[kind](value) or (choices and value not in choices):
            expected = f"one of {list(choices)}" if choices else f"of type {kind}"
            raise ValueError(f"preset {path}: {key}: {value!r} is not {expected}" + (" or null" if optional else ""))
    if preset.get("policy"):
        preset["policy"] = str(path.parent / preset["policy"])
    return preset


def argument_parser() -> argparse.ArgumentParser:
    """`python -m api`'s flags, one per ServerConfig field, each with its default shown, and --config."""
    ap = argparse.ArgumentParser(prog="python -m api", description="Switchyard: an OpenAI-compatible server",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", help="a preset: system1 ... system5 (configs/NAME.json) or a JSON file of "
                                     "settings; flags given here override it")
    for field in dataclasses.fields(ServerConfig):
        flag = "--" + field.name.replace("_", "-")
        meta = dict(field.metadata)
        help = meta.pop("help")
        if field.type == "bool":
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help)
        else:
            ap.add_argument(flag, type=_type_of(field), default=field.default, help=help, **meta)
    return ap


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """A ServerConfig from command-line flags, over the preset of --config if one is named."""
    ap = argument_parser()
    preset_name = ap.parse_known_args(argv)[0].config
    if preset_name:
        try:
            preset = load_preset(preset_name)
        except ValueError as e:
            ap.error(f"--config: {e}")
        if preset.get("speculative"):
            logger.warning("preset %s asks for speculative decoding with a draft model, which Switchyard does not "
                           "implement yet: serving without it (n-gram drafts: --speculative-ngram)", preset_name)
        # The preset replaces the defaults, so that a flag given explicitly still wins.
        ap.set_defaults(**{k: v for k, v in preset.items() if k not in _PRESET_ONLY})
    args = vars(ap.parse_args(argv))
    del args["config"]
    args["public_paths"] = tuple(args["public_paths"])
    return ServerConfig(**args)
