"""Everything that fixes a server, as one frozen dataclass whose fields give `python -m api` its flags.

Engine settings take their defaults from `EngineConfig`, so a default is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from scheduler.engine import EngineConfig

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
    max_num_seqs: int = _engine("max_num_seqs", "sequences running at once per engine")
    max_num_batched_tokens: int = _engine("max_num_batched_tokens", "tokens computed per engine step")
    prefix_caching: bool = _engine("enable_prefix_caching", "reuse the KV blocks of shared prompt prefixes")
    attention_backend: str = _engine("attention_backend", "auto: Triton kernels on CUDA, else the torch reference",
                                     choices=("auto", "torch", "triton"))
    enforce_eager: bool = _engine("enforce_eager", "CUDA: no CUDA graphs, no torch.compile")
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

    def engine_config(self, small: bool, shared_gpu: bool) -> EngineConfig:
        """The EngineConfig of the large or the small model."""
        if small:
            utilization = self.small_gpu_memory_utilization or (0.45 if shared_gpu else self.gpu_memory_utilization)
            model, device = self.small_model, self.small_device or self.device
        else:
            model, device, utilization = self.model, self.device, self.gpu_memory_utilization
        return EngineConfig(model=model, load_format=self.load_format, tokenizer=self.tokenizer, dtype=self.dtype,
                            device=device, gpu_memory_utilization=utilization, kv_cache_gib=self.kv_cache_gib,
                            max_model_len=self.max_model_len, block_size=self.block_size,
                            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                            enable_prefix_caching=self.prefix_caching, attention_backend=self.attention_backend,
                            enforce_eager=self.enforce_eager)


def _type_of(field: dataclasses.Field):
    kind = field.type.split(" | ")[0]
    return {"int": int, "float": float, "str": str, "tuple[str, ...]": str}[kind]


def argument_parser() -> argparse.ArgumentParser:
    """`python -m api`'s flags, one per ServerConfig field, each with its default shown."""
    ap = argparse.ArgumentParser(prog="python -m api", description="Switchyard: an OpenAI-compatible server",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    """A ServerConfig from command-line flags."""
    args = vars(argument_parser().parse_args(argv))
    args["public_paths"] = tuple(args["public_paths"])
    return ServerConfig(**args)
