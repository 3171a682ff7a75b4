"""Start the server: `python -m api` serves the embedded model on http://127.0.0.1:8000.

    python -m api --model /models/Qwen3-8B --small-model /models/Qwen3-1.7B --small-device cuda:1
"""

from __future__ import annotations

import argparse
import os
import sys

from models.errors import ModelLoadError


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m api", description="Switchyard OpenAI-compatible server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="embedded", help="large model: 'embedded', an HF dir, a .gguf or a hub id")
    ap.add_argument("--small-model", help="small model (default: the large model serves both roles)")
    ap.add_argument("--served-model-name", help="name clients see for the large model")
    ap.add_argument("--small-served-model-name")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--tokenizer", help="use this model's tokenizer (a directory or 'embedded'), e.g. with "
                                        "--load-format dummy, whose random weights come without one")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", help="large model's device, e.g. cuda:0 (default: cuda if present, else cpu)")
    ap.add_argument("--small-device", help="small model's device (default: the large model's)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="fraction of the GPU in use once the large model's KV cache exists")
    ap.add_argument("--small-gpu-memory-utilization", type=float,
                    help="the same for the small model (default 0.45 on a shared GPU, else as the large)")
    ap.add_argument("--kv-cache-gib", type=float, help="fixed KV cache size per model (default on CPU: 1 GiB)")
    ap.add_argument("--max-model-len", type=int)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"],
                    help="auto: Triton kernels on CUDA when triton is installed, else the torch reference")
    ap.add_argument("--enforce-eager", action="store_true", help="CUDA: no CUDA graphs, no torch.compile")
    ap.add_argument("--policy", help="JSON file overriding the per-task policy (see tasks/policy.py)")
    ap.add_argument("--api-key", default=os.environ.get("SWITCHYARD_API_KEY"),
                    help="require 'Authorization: Bearer KEY' (default: $SWITCHYARD_API_KEY)")
    ap.add_argument("--max-queued-prompts", type=int, default=4096, help="beyond this, answer 429")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--max-body-bytes", type=int, default=4 << 20)
    return ap.parse_args(argv)


def _display_name(model: str) -> str:
    if model == "embedded":
        from models.embedded import EMBEDDED_MODEL
        return EMBEDDED_MODEL
    return model.rstrip("/").rsplit("/", 1)[-1] if os.path.exists(model) else model


def build_service(args: argparse.Namespace):
    """Load the engines and wire the CompletionService (also used by tests)."""
    from api.metrics import Metrics
    from api.serving import CompletionService
    from scheduler.async_engine import AsyncEngine
    from scheduler.engine import EngineConfig, LLMEngine
    from tasks.policy import load_policies

    def config(model, device, utilization):
        return EngineConfig(model=model, load_format=args.load_format, tokenizer=args.tokenizer, dtype=args.dtype,
                            device=device,
                            gpu_memory_utilization=utilization, kv_cache_gib=args.kv_cache_gib,
                            max_model_len=args.max_model_len, block_size=args.block_size,
                            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                            enable_prefix_caching=not args.no_prefix_caching,
                            attention_backend=args.attention_backend, enforce_eager=args.enforce_eager)

    policies = load_policies(args.policy)
    shared_gpu = args.small_device in (None, args.device)
    small_util = args.small_gpu_memory_utilization or (0.45 if shared_gpu else args.gpu_memory_utilization)
    large_util = args.gpu_memory_utilization
    engines, names = {}, {}
    if args.small_model and args.small_model != args.model:
        # On a shared GPU the small engine goes first and leaves the rest to the large one.
        engines["small"] = AsyncEngine(LLMEngine(config(args.small_model, args.small_device or args.device,
                                                        small_util)), "small")
        names["small"] = args.small_served_model_name or _display_name(args.small_model)
    engines["large"] = AsyncEngine(LLMEngine(config(args.model, args.device, large_util)), "large")
    names["large"] = args.served_model_name or _display_name(args.model)
    engines.setdefault("small", engines["large"])
    names.setdefault("small", names["large"])
    return CompletionService(engines, names, policies, Metrics(), max_queued_prompts=args.max_queued_prompts,
                             request_timeout=args.request_timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        service = build_service(args)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn
    from api.server import build_app
    app = build_app(service, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
    print(f"serving {sorted(set(service.names.values()))} on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
