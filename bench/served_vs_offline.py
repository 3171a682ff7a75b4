"""Served vs offline: one fixed request set through `LLM.generate` in-process and over HTTP, same run.

    python -m bench.served_vs_offline --limit 4 --max-tokens 32       # CPU: the embedded model, 4 course batches
    python -m bench.served_vs_offline --model Qwen/Qwen3-0.6B --load-format dummy --tokenizer .tokenizer \\
        --workload both --json served.json                           # GPU

What the HTTP path costs on top of the engine: the same requests go, one mode after the other,
  server     to `python -m api` (a subprocess with the same engine flags), unstreamed, then streamed
             (`stream_options.include_usage`), every request sent at once (or --concurrency at a time);
             wall time from the first send to the last answer; tokens from `usage.completion_tokens`;
  in-process through `LLM.generate` in this process, once the server has exited (so each mode finds
             the whole GPU free), timed by `bench.offline_throughput.run_switchyard`.
Each mode is warmed up first as `run_switchyard` does (4 prompts, 8 tokens). The table gives output
tok/s per mode and its ratio to in-process.

The engine does identical work in every mode: prompts are sent as token ids (which the server routes
to `general`: no template, no policy, no answer fix-ups), greedy, with `ignore_eos` so every request
yields exactly its output length, and prefix caching is off so no mode reuses an earlier mode's prefill.
Request sets (--workload):
  course    the course trace (data/course/batch_arrivals.json), batch by batch as the course sends
            them (1-8 prompts per request); each prompt made into what the server would run for it
            (tasks/router.py picks the task, tasks/policy.py its chat template, thinking switch and
            max_tokens cap) and tokenized here. A batch whose prompts got different caps goes out as
            one request per cap (a request has one max_tokens). Needs a tokenizer (--tokenizer).
  nanovllm  bench.offline_throughput's nano-vllm workload (256 prompts of random ids, 100-1024 in and
            out), one prompt per request.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import torch

from bench.http_client import DEFAULT_CLIENT_PROCESSES, Request, served_run_split
from bench.offline_throughput import make_requests, run_switchyard
from bench.replay import COURSE_TRACE, load_trace
from bench.server_process import running_server

WORKLOADS = ("course", "nanovllm")
MODES = ("in-process", "HTTP unstreamed", "HTTP streamed")


def course_batches(tokenizer, trace: str | Path = COURSE_TRACE, limit: int | None = None,
                   max_tokens: int | None = None) -> list[list[Request]]:
    """The trace's batches as engine prompts with their policy-capped output lengths (see module docstring)."""
    from tasks.length_budget import length_budget
    from tasks.policy import load_policies
    from tasks.router import classify
    policies = load_policies()
    batches = []
    for batch in load_trace(trace)[:limit]:
        by_cap: dict[int, list[Request]] = {}
        for text in batch["prompts"]:
            policy = policies[classify(text)]
            cap = min(batch.get("max_length", 2048), policy.max_tokens or math.inf, max_tokens or math.inf)
            if policy.length_from_instruction:
                cap = min(cap, length_budget(text) or cap)
            if policy.chat_template:
                kwargs = {} if policy.enable_thinking is None else {"enable_thinking": policy.enable_thinking}
                text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True, **kwargs)
            by_cap.setdefault(cap, []).append((tokenizer(text).input_ids, cap))  # as the engine tokenizes text
        batches += by_cap.values()
    return batches


def nanovllm_batches(vocab_size: int, limit: int | None = None, max_tokens: int | None = None) -> list[list[Request]]:
    """bench.offline_throughput's nano-vllm requests (seed 0), one per batch, output lengths capped."""
    requests = make_requests(types.SimpleNamespace(workload="nanovllm", seed=0), vocab_size)[:limit]
    return [[(ids, min(n, max_tokens or n))] for ids, n in requests]


def engine_settings(args: argparse.Namespace) -> dict:
    """The engine's configuration, shared by the in-process `LLM` and the server's command line."""
    return {"model": args.model, "load_format": args.load_format, "tokenizer": args.tokenizer,
            "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens, "attention_backend": args.attention_backend,
            "kv_cache_gib": args.kv_cache_gib, "enable_prefix_caching": False}


def server_argv(settings: dict) -> list[str]:
    """`python -m api` flags for `engine_settings` (unset ones left to the server's defaults)."""
    argv = [] if settings["enable_prefix_caching"] else ["--no-prefix-caching"]
    for key, value in settings.items():
        if key != "enable_prefix_caching" and value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def row(workload: str, mode: str, batches: list[list[Request]], seconds: float, tokens: int) -> dict:
    """One line of the report."""
    return {"workload": workload, "mode": mode, "requests": len(batches), "prompts": sum(map(len, batches)),
            "expected_tokens": sum(n for batch in batches for _, n in batch), "output_tokens": tokens,
            "seconds": seconds, "tok_per_s": tokens / seconds}


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's tok/s over the in-process row of its workload."""
    base = {r["workload"]: r["tok_per_s"] for r in rows if r["mode"] == "in-process"}
    for r in rows:
        r["vs_in_process"] = r["tok_per_s"] / base[r["workload"]]
    return rows


def compare(settings: dict, workloads: dict[str, list[list[Request]]], *, port: int = 0,
            concurrency: int = 0, timeout: float = 3600.0, server_flags: tuple = (),
            client_processes: int = 1) -> list[dict]:
    """Every workload over HTTP (unstreamed, streamed), then in-process; one row per workload and mode."""
    rows = []
    with running_server([*server_argv(settings), *server_flags], port) as server:
        url = server.url
        for name, batches in workloads.items():
            for stream in (False, True):
                seconds, tokens = served_run_split(url, batches, stream=stream, concurrency=concurrency,
                                                   timeout=timeout, processes=client_processes)
                rows.append(row(name, MODES[2 if stream else 1], batches, seconds, tokens))
                print(f"{name}, {rows[-1]['mode']}: {tokens} tokens in {seconds:.2f} s", file=sys.stderr, flush=True)
    from scheduler.llm import LLM
    llm = LLM(**settings)
    for name, batches in workloads.items():
        seconds, tokens, _ = run_switchyard(llm, [req for batch in batches for req in batch])
        rows.append(row(name, MODES[0], batches, seconds, tokens))
    rows.sort(key=lambda r: (list(workloads).index(r["workload"]), MODES.index(r["mode"])))
    return add_ratios(rows)


def print_table(rows: list[dict]) -> None:
    """mode, requests, prompts, output tokens (expected), seconds, tok/s, ratio to in-process."""
    print(f"{'workload':9} {'mode':16} {'requests':>8} {'prompts':>7} {'out tokens':>10} {'expected':>9} "
          f"{'seconds':>8} {'out tok/s':>10} {'vs in-process':>13}")
    for r in rows:
        print(f"{r['workload']:9} {r['mode']:16} {r['requests']:8d} {r['prompts']:7d} {r['output_tokens']:10d} "
              f"{r['expected_tokens']:9d} {r['seconds']:8.2f} {r['tok_per_s']:10.1f} {r['vs_in_process']:12.1%}")


def _vocab_size(model: str, load_format: str) -> int:
    """The model's vocabulary size without loading it (as `models.loader.load_model` finds its config)."""
    from models.config import ModelConfig, preset_config
    from models.loader import resolve_model_dir
    preset = preset_config(model) if load_format == "dummy" else None
    return preset["vocab_size"] if preset else ModelConfig.from_model_dir(resolve_model_dir(model)).vocab_size


def build_workloads(args: argparse.Namespace) -> dict[str, list[list[Request]]]:
    """The request sets --workload names, before any engine exists (the server runs first)."""
    names = WORKLOADS if args.workload == "both" else (args.workload,)
    workloads = {}
    if "course" in names:
        from models.loader import load_tokenizer, resolve_model_dir
        tokenizer = load_tokenizer(resolve_model_dir(args.tokenizer or args.model))
        if tokenizer is None:
            raise SystemExit("the course workload needs a tokenizer: pass --tokenizer DIR "
                             "(e.g. .tokenizer, written by `python -m bench.copy_tokenizer`)")
        workloads["course"] = course_batches(tokenizer, args.trace, args.limit, args.max_tokens)
    if "nanovllm" in names:
        workloads["nanovllm"] = nanovllm_batches(_vocab_size(args.model, args.load_format), args.limit,
                                                 args.max_tokens)
    return workloads


def main(argv=None) -> None:
    """The command line: build the request sets, run every mode, print the table (and --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--tokenizer", help="another model's tokenizer, e.g. .tokenizer for dummy weights")
    ap.add_argument("--workload", default="course", choices=[*WORKLOADS, "both"])
    ap.add_argument("--trace", default=str(COURSE_TRACE))
    ap.add_argument("--limit", type=int, help="only the first N trace batches / nano-vllm requests")
    ap.add_argument("--max-tokens", type=int, help="cap every request's output length")
    ap.add_argument("--concurrency", type=int, default=0, help="HTTP requests in flight at most (0: all at once)")
    ap.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="HTTP client timeout per request, seconds")
    ap.add_argument("--max-model-len", type=int)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--attention-backend", default="auto", help="see python -m api --help")
    ap.add_argument("--engine-process", action="store_true", help="the server runs its engine in a child process")
    ap.add_argument("--kv-cache-gib", type=float, help="fixed KV cache size (default: 1 GiB on CPU, measured on CUDA)")
    ap.add_argument("--client-processes", type=int, default=DEFAULT_CLIENT_PROCESSES,
                    help="HTTP client processes sharing the requests (default: one per 4 CPUs, at most 4, "
                         f"here {DEFAULT_CLIENT_PROCESSES})")
    ap.add_argument("--json", help="write the settings and rows here")
    args = ap.parse_args(argv)
    settings = engine_settings(args)
    rows = compare(settings, build_workloads(args), port=args.port, concurrency=args.concurrency,
                   timeout=args.timeout, server_flags=("--engine-process",) if args.engine_process else (),
                   client_processes=args.client_processes)
    # Asked only now: until the server has exited, this process leaves the GPU alone.
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{args.model} ({args.load_format}), device {device}, prefix caching off, "
          f"HTTP concurrency {args.concurrency or 'all at once'} from {args.client_processes} client process(es), "
          f"server engine {'in a child process' if args.engine_process else 'on a thread'}")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "settings": settings, "args": vars(args),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
