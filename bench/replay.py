"""Load generators against a running server: replay a batch-arrival trace, or hold a fixed concurrency.

    python -m bench.replay --url http://127.0.0.1:8000 --trace data/course/batch_arrivals.json
    python -m bench.replay --url http://127.0.0.1:8000 --trace data/course/batch_arrivals.json \\
        --time-scale 0.5 --window 600            # twice as dense, a 10-minute window
    python -m bench.replay --url ... --trace ... --concurrency 64 --num-requests 500
    python -m bench.replay --url https://WORKSPACE--APP-model-completions.modal.run   # a Modal deployment

A trace is the course format: a list of batches with `arrival_time` (s), `prompts` and `max_length`.
Each batch is one POST of {"prompt": [...], "max_tokens": max_length}, as the course's client sends
it: to the URL as given, or to its root `/` if it has no path (`python -m api` and the Modal
deployment both serve completions there; `--url http://HOST/v1/completions` posts there). The report
counts requests answered within the window, latency percentiles per task (a request's latency counts
for the task of each of its prompts, as the server labelled it) and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import httpx


COURSE_TRACE = Path(__file__).resolve().parent.parent / "data" / "course" / "batch_arrivals.json"


def load_trace(path: str | Path) -> list[dict]:
    """The batches of a course-format trace, by arrival; ValueError naming the file if it is not one."""
    try:
        batches = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the trace ({e})") from e
    if not isinstance(batches, list) or not all("prompts" in b and "arrival_time" in b for b in batches):
        raise ValueError(f"{path}: not a batch-arrival trace (a list of batches with arrival_time and prompts)")
    return sorted(batches, key=lambda b: b["arrival_time"])


def completions_url(url: str) -> str:
    """Where to POST: `url` itself if it names a path, else its root `/` (a course-style bare URL)."""
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/"


def auth_headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _post(client: httpx.AsyncClient, url: str, prompts: list[str], max_tokens: int, timeout: float,
                headers: dict) -> dict:
    start = time.monotonic()
    record = {"prompts": len(prompts), "sent": start}
    try:
        r = await client.post(url, json={"prompt": prompts, "max_tokens": max_tokens}, timeout=timeout,
                              headers=headers)
        record["status"] = r.status_code
        if r.status_code == 200:
            body = r.json()
            record["tasks"] = [c.get("task", "unknown") for c in body["choices"]]
            record["completion_tokens"] = body.get("usage", {}).get("completion_tokens", 0)
        else:
            record["error"] = r.text[:300]
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        record["status"] = None
        record["error"] = f"{type(e).__name__}: {e}"
    record["latency"] = time.monotonic() - start
    return record


async def replay(url: str, batches: list[dict], time_scale: float = 1.0, timeout: float = 600.0,
                 api_key: str | None = None, max_tokens: int | None = None) -> list[dict]:
    """Send each batch at its (scaled) arrival time; returns one record per batch."""
    headers = auth_headers(api_key)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits) as client:
        start = time.monotonic()

        async def fire(batch):
            await asyncio.sleep(max(0.0, start + batch["arrival_time"] * time_scale - time.monotonic()))
            rec = await _post(client, completions_url(url), batch["prompts"],
                              max_tokens or batch.get("max_length", 2048), timeout, headers)
            rec["sent"] -= start
            return rec

        return await asyncio.gather(*(fire(b) for b in batches))


async def fixed_concurrency(url: str, prompts: list[str], concurrency: int, num_requests: int,
                            max_tokens: int, seed: int = 0, timeout: float = 600.0,
                            api_key: str | None = None) -> list[dict]:
    """`concurrency` clients, each sending requests of 1-8 random prompts back to back."""
    rng = random.Random(seed)
    plan = [rng.sample(prompts, rng.randint(1, min(8, len(prompts)))) for _ in range(num_requests)]
    headers = auth_headers(api_key)
    queue: asyncio.Queue = asyncio.Queue()
    for p in plan:
        queue.put_nowait(p)
    records = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.monotonic()

        async def worker():
            while not queue.empty():
                rec = await _post(client, completions_url(url), queue.get_nowait(), max_tokens,
                                  timeout, headers)
                rec["sent"] -= start
                records.append(rec)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarize(records: list[dict], window: float) -> dict:
    """Requests served within the window, errors, output tok/s from the first send to the last
    answer, and latency percentiles per task."""
    ok = [r for r in records if r.get("status") == 200]
    span = (max(r["sent"] + r["latency"] for r in records) - min(r["sent"] for r in records)) if records else 0.0
    served = [r for r in ok if r["sent"] + r["latency"] <= window]
    by_task = defaultdict(list)
    for r in ok:
        for task in r["tasks"]:
            by_task[task].append(r["latency"])
    return {
        "requests": len(records),
        "prompts": sum(r["prompts"] for r in records),
        "served_in_window": len(served),
        "prompts_served_in_window": sum(r["prompts"] for r in served),
        "errors": len(records) - len(ok),
        "error_samples": [r.get("error") for r in records if r.get("status") != 200][:5],
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in ok),
        "span_s": span,
        "output_tok_per_s": sum(r.get("completion_tokens", 0) for r in ok) / span if span else 0.0,
        "latency": {task: {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90),
                           "p99": percentile(v, 99)} for task, v in sorted(by_task.items())},
    }


def print_report(summary: dict, window: float) -> None:
    print(f"requests {summary['requests']} ({summary['prompts']} prompts), served within {window:g} s: "
          f"{summary['served_in_window']} ({summary['prompts_served_in_window']} prompts), "
          f"errors {summary['errors']}, completion tokens {summary['completion_tokens']} in "
          f"{summary['span_s']:.1f} s ({summary['output_tok_per_s']:.0f} tok/s)")
    print(f"{'task':12} {'n':>5} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8}")
    for task, s in summary["latency"].items():
        print(f"{task:12} {s['n']:5d} {s['p50']:8.2f} {s['p90']:8.2f} {s['p99']:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000",
                    help="the server, or the full URL to POST to (a bare URL posts to '/')")
    ap.add_argument("--trace", default=str(COURSE_TRACE), help="a course-format batch-arrival trace")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply arrival times (0.5 = twice as dense)")
    ap.add_argument("--window", type=float, default=1200.0, help="seconds within which a request counts as served")
    ap.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, as the course's")
    ap.add_argument("--max-tokens", type=int, help="override each batch's max_length")
    ap.add_argument("--concurrency", type=int, help="instead of the schedule: this many clients back to back")
    ap.add_argument("--num-requests", type=int, default=500)
    ap.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    ap.add_argument("--output", help="write the records and summary as JSON here")
    args = ap.parse_args()
    try:
        batches = load_trace(args.trace)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.concurrency:
        prompts = [p for b in batches for p in b["prompts"]]
        records = asyncio.run(fixed_concurrency(args.url, prompts, args.concurrency, args.num_requests,
                                                args.max_tokens or 2048, timeout=args.timeout, api_key=args.api_key))
    else:
        records = asyncio.run(replay(args.url, batches, args.time_scale, args.timeout, args.api_key, args.max_tokens))
    summary = summarize(records, args.window)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"summary": summary, "records": records}, indent=1))
    print_report(summary, args.window)


if __name__ == "__main__":
    main()
