"""Serve each preset of configs/ and replay the course trace against it: the presets' table.

    python -m bench.presets --load-format dummy --tokenizer .tokenizer --time-scale 0.02      # GPU, all five
    python -m bench.presets --presets system4 --request-timeout 300 --out-dir presets/

Per preset, one after the other, each server on an empty machine: `python -m api --config NAME`
(plus --load-format/--tokenizer), the trace replayed as the course sends it (bench.replay), then
SIGTERM. Reported: each engine's weight memory and KV blocks (from the server's log), requests served
and failed, output tok/s and p50/p99 latency per task, and how long the server took to exit; one that
did not exit within --exit-timeout is killed after printing every thread's stack into its log. After a
replay with failed requests, the engines' gauges from /metrics (or that it did not answer) are kept
too: they tell an engine stuck with work from an event loop that stopped answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path

import httpx

from api.config import PRESETS_DIR
from bench.replay import COURSE_TRACE, load_trace, replay, summarize
from bench.server_process import running_server

# scheduler.engine's start-up line: "MODEL: weights 9.82 GiB (quantization bnb-4bit), KV cache 21489 blocks ..."
_ENGINE_LINE = re.compile(r"INFO scheduler\.engine: (\S+): weights ([\d.]+) GiB \(quantization ([\w-]+)\), "
                          r"KV cache (\d+) blocks")


def engines_from_log(text: str) -> list[dict]:
    """The engines a server log says it loaded, in load order."""
    return [{"model": m[1], "weights_gib": float(m[2]), "quantization": m[3], "kv_blocks": int(m[4])}
            for m in _ENGINE_LINE.finditer(text)]


def engine_gauges(url: str) -> str:
    """The server's per-engine gauges (loop alive, running and waiting sequences, KV blocks in use) from
    /metrics, or why there are none."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError as e:
        return f"/metrics did not answer: {e!r}"
    wanted = ("switchyard_engine_alive", "switchyard_stalled_step_seconds", "switchyard_running_sequences",
              "switchyard_waiting_sequences", "switchyard_kv_blocks_used")
    return "\n".join(line for line in text.splitlines() if line.startswith(wanted))


def run_preset(name: str, args: argparse.Namespace, batches: list[dict], out_dir: Path) -> dict:
    argv = ["--config", name, "--load-format", args.load_format]
    if args.tokenizer:
        argv += ["--tokenizer", args.tokenizer]
    log = out_dir / f"{name}.log"
    result = {"preset": name}
    try:
        with running_server(argv, log=log, ready_timeout=args.ready_timeout, exit_timeout=args.exit_timeout) as srv:
            records = asyncio.run(replay(srv.url, batches, args.time_scale, args.request_timeout))
            result["replay"] = summarize(records, args.window)
            if result["replay"]["errors"]:
                result["gauges_after_errors"] = engine_gauges(srv.url)
        result["exit_seconds"] = srv.exit_seconds
    except RuntimeError as e:  # it did not start: the log says why
        result["error"] = str(e)
    result["engines"] = engines_from_log(log.read_text(errors="replace"))
    return result


def print_table(results: list[dict]) -> None:
    """One line per preset: its engines (weights, KV blocks), then what the replay got."""
    for r in results:
        engines = "; ".join(f"{e['model']} {e['quantization']} {e['weights_gib']:.2f} GiB {e['kv_blocks']} blocks"
                            for e in r["engines"])
        print(f"{r['preset']}: {engines or 'no engine loaded'}")
        if "error" in r:
            print(f"    failed: {r['error']}")
            continue
        rep = r["replay"]
        p99 = ", ".join(f"{task} {s['p99']:.2f}" for task, s in rep["latency"].items())
        seconds = r["exit_seconds"]
        exited = "killed after SIGTERM" if seconds is None else f"exited {seconds:.1f} s after SIGTERM"
        print(f"    {rep['served_in_window']}/{rep['requests']} requests served, {rep['errors']} errors, "
              f"{rep['output_tok_per_s']:.0f} output tok/s, p99 s: {p99 or '-'}; {exited}")
        if "gauges_after_errors" in r:
            print("    after the errors: " + r["gauges_after_errors"].replace("\n", "; "))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=sorted(p.stem for p in PRESETS_DIR.glob("system*.json")))
    ap.add_argument("--load-format", default="dummy", choices=["auto", "dummy"])
    ap.add_argument("--tokenizer", help="another model's tokenizer, e.g. .tokenizer for dummy weights")
    ap.add_argument("--trace", default=str(COURSE_TRACE))
    ap.add_argument("--time-scale", type=float, default=0.02, help="multiply arrival times (0.02 = 50x as dense)")
    ap.add_argument("--window", type=float, default=1200.0, help="seconds within which a request counts as served")
    ap.add_argument("--request-timeout", type=float, default=600.0, help="client timeout per request, seconds")
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds a server may take to load")
    ap.add_argument("--exit-timeout", type=float, default=60.0, help="seconds a server may take to exit on SIGTERM")
    ap.add_argument("--out-dir", default="presets", help="the servers' logs and presets.json go here")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = load_trace(args.trace)
    results = []
    for name in args.presets:
        results.append(run_preset(name, args, batches, out_dir))
        print(f"{name}: {json.dumps(results[-1])[:400]}", file=sys.stderr, flush=True)
        (out_dir / "presets.json").write_text(json.dumps(results, indent=1))  # kept if a later preset hangs
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
