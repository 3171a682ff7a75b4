"""Online serving: the three-task mix streamed through a running server at increasing Poisson arrival rates.

    python -m bench.online_serving --url http://127.0.0.1:8000 --rates 1,2,4,8,16 --duration 60 --json online.json

For each rate in turn (the next starts once the server has drained) requests arrive as a Poisson
process for `--duration` seconds (or `--num-requests` of them), seeded so that every rate sends the
same sequence of requests, only spaced differently. Each request is one real course prompt, sent
unlabelled as text through POST /v1/completions with `stream: true`; the server's router labels it.
Printed last, per rate: requests sent / finished / failed, request and output-token throughput,
TTFT, TPOT and ITL p50/p99, and the share of requests that finished within their task's deadline;
then the highest rate up to which every request did. `--json FILE` keeps every request's record.

Definitions (as in vLLM's serving benchmark):
    TTFT  send -> first chunk carrying tokens (the server sends a chunk whenever tokens are
          ready, even when their text is still held back).
    TPOT  per request, (end-to-end latency - TTFT) / (output tokens - 1).
    ITL   gaps between consecutive token-carrying chunks, pooled over all requests of a rate (a
          client that falls behind gets the tokens waiting for it in one chunk, so under load a
          chunk can carry several tokens; TPOT is per token).
    Throughput divides by the wall time from the rate's start to its last response.

The request mix: the course's dev_test prompts (`evaluation.sets`, 100 per task), a task drawn
uniformly, then one of its prompts. Output lengths come from per-task distributions
(OUTPUT_LENGTHS) and are enforced with `max_tokens` plus `ignore_eos`, so random weights produce
exactly the drawn length; deadlines are DEADLINE_S. Both are documented where they are defined.

Dummy weights on a GPU machine, which has neither real weights nor the embedded model's package:
copy a tokenizer here first (`python -m bench.copy_tokenizer` writes the git-ignored `.tokenizer/`,
which travels with the working tree), then there

    python -m api --model Qwen/Qwen3-0.6B --load-format dummy --tokenizer .tokenizer &
    python -m bench.online_serving --rates 1,2,4,8,16,32 --json online.json

The client waits for the server to come up, then warms it up (see `warm_up`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import httpx

from bench.replay import auth_headers, percentile
from evaluation.sets import load_items
from tasks.router import TASKS


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
    """Log-normal output lengths (as measured answer lengths are), clipped to [low, high]."""

    median: int
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        return max(self.low, min(self.high, round(rng.lognormvariate(math.log(self.median), self.sigma))))


# Every `high` stays within the policy's max_tokens cap (tasks/policy.py: 512, 1024, 1024), so the
# server generates what was drawn. No real Qwen3 answers can be measured yet, so two are estimates.
OUTPUT_LENGTHS = {
    # Estimate: Qwen3 without thinking writes a short explanation and "The answer is (X)".
    "mmlu_med": LengthDistribution(median=96, sigma=0.6, low=8, high=384),
    # Estimate: some working over the listed edges, then one submit_paths(paths=..., weights=...) call.
    "graph": LengthDistribution(median=320, sigma=0.5, low=48, high=768),
    # Measured on GPT-4's reference answers to the 500 InfoBench instructions
    # (data/infobench/reference_gpt4_outputs_with_eval.jsonl, SmolLM2 tokenizer): median 222 tokens,
    # quartiles 80 and 377, p90 528. This fit gives quartiles 135 and 372, p90 584.
    "infobench": LengthDistribution(median=224, sigma=0.75, low=16, high=1024),
}

# The course sets no per-request deadline: its client gives up after 600 s (`--timeout`) and counts
# requests served in 20 minutes. A streamed answer is useful if it starts soon and keeps pace with a
# reader, so each task's deadline is TTFT_BUDGET_S plus TPOT_BUDGET_S per token of its longest draw:
# mmlu_med 21.2 s, graph 40.4 s, infobench 53.2 s.
TTFT_BUDGET_S = 2.0
TPOT_BUDGET_S = 0.05   # 20 tokens/s, faster than anyone reads
DEADLINE_S = {task: round(TTFT_BUDGET_S + TPOT_BUDGET_S * dist.high, 3) for task, dist in OUTPUT_LENGTHS.items()}

# The router's task names -> the names of the evaluation sets.
_EVAL_SETS = {"graph": "graphdev", "mmlu_med": "mmlu_med", "infobench": "infobench"}
WARM_UP_PROMPTS = 24
WARM_UP_TOKENS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedRequest:
    arrival: float      # seconds after the rate's start
    task: str           # the task whose prompt was drawn; the server is not told
    prompt: str
    max_tokens: int


def load_prompts() -> dict[str, list[str]]:
    """The course's dev_test prompts as served, 100 per task, by the router's task name."""
    return {task: [item.prompt for item in load_items(_EVAL_SETS[task])] for task in TASKS}


def plan_requests(prompts: dict[str, list[str]], rate: float, *, duration: float | None = None,
                  num_requests: int | None = None, seed: int = 0,
                  lengths: dict[str, LengthDistribution] = OUTPUT_LENGTHS) -> list[PlannedRequest]:
    """Poisson arrivals at `rate` per second until `duration` s have passed or `num_requests` were drawn.

    The draws come in a fixed order from one seeded generator, so every rate gets the same requests.
    """
    if (duration is None) == (num_requests is None):
        raise ValueError("give exactly one of duration and num_requests")
    rng = random.Random(seed)
    plan, clock = [], 0.0
    while num_requests is None or len(plan) < num_requests:
        clock += rng.expovariate(rate)
        task = rng.choice(TASKS)
        prompt = rng.choice(prompts[task])
        max_tokens = lengths[task].draw(rng)
        if duration is not None and clock > duration:
            break
        plan.append(PlannedRequest(clock, task, prompt, max_tokens))
    return plan


async def stream_request(client: httpx.AsyncClient, url: str, req: PlannedRequest, *, start: float,
                         timeout: float, headers: dict) -> dict:
    """Send one streamed completion and time its chunks; returns the request's record."""
    body = {"prompt": req.prompt, "max_tokens": req.max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    record = {"task": req.task, "max_tokens": req.max_tokens, "deadline": DEADLINE_S[req.task],
              "arrival": round(req.arrival, 6), "status": None, "error": None}
    chunk_times: list[float] = []
    sent = time.monotonic()
    try:
        await asyncio.wait_for(_read_events(client, url + "/v1/completions", body, headers, record, chunk_times),
                               timeout)
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        record["error"] = f"{type(e).__name__}: {e}"[:300]
    end = time.monotonic()
    record["sent"] = round(sent - start, 6)
    record["latency"] = round(end - sent, 6)
    record["ok"] = record["error"] is None and record.get("done", False) and bool(chunk_times)
    if chunk_times:
        record["ttft"] = round(chunk_times[0] - sent, 6)
        record["itl"] = [round(b - a, 6) for a, b in zip(chunk_times, chunk_times[1:])]
    tokens = record.get("completion_tokens", 0)
    if record["ok"] and tokens > 1:
        record["tpot"] = round((record["latency"] - record["ttft"]) / (tokens - 1), 6)
    record["within_deadline"] = record["ok"] and record["latency"] <= record["deadline"]
    return record


async def _read_events(client, url, body, headers, record, chunk_times) -> None:
    async with client.stream("POST", url, json=body, headers=headers) as r:
        record["status"] = r.status_code
        if r.status_code != 200:
            record["error"] = (await r.aread()).decode(errors="replace")[:300]
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            if line == "data: [DONE]":
                record["done"] = True
                return
            event = json.loads(line[len("data: "):])
            if "error" in event:
                record["error"] = event["error"].get("message", "error")
                return
            for choice in event["choices"]:
                chunk_times.append(now)
                if choice.get("finish_reason") is not None:
                    record["finish_reason"] = choice["finish_reason"]
                    record["served_task"] = choice.get("task")
            if event.get("usage"):
                record["prompt_tokens"] = event["usage"]["prompt_tokens"]
                record["completion_tokens"] = event["usage"]["completion_tokens"]


async def run_rate(client: httpx.AsyncClient, url: str, plan: list[PlannedRequest], *, timeout: float,
                   headers: dict) -> tuple[list[dict], float]:
    """Send each planned request at its arrival time; returns the records and the wall time to the last answer."""
    start = time.monotonic()

    async def fire(req):
        await asyncio.sleep(max(0.0, start + req.arrival - time.monotonic()))
        return await stream_request(client, url, req, start=start, timeout=timeout, headers=headers)

    records = await asyncio.gather(*(fire(r) for r in plan))
    return list(records), time.monotonic() - start


def summarize_rate(rate: float, records: list[dict], wall: float) -> dict:
    """One row of the report: counts, throughput, latency percentiles and the deadline share."""
    ok = [r for r in records if r["ok"]]
    ttft = [r["ttft"] for r in ok]
    tpot = [r["tpot"] for r in ok if "tpot" in r]
    itl = [gap for r in ok for gap in r["itl"]]
    return {
        "rate": rate, "sent": len(records), "finished": len(ok), "errors": len(records) - len(ok),
        "error_samples": [r["error"] for r in records if not r["ok"]][:5],
        "wall_s": wall,
        "req_per_s": len(ok) / wall, "output_tok_per_s": sum(r.get("completion_tokens", 0) for r in ok) / wall,
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "tpot_p50": percentile(tpot, 50), "tpot_p99": percentile(tpot, 99),
        "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
        "within_deadline": sum(r["within_deadline"] for r in records) / len(records) if records else float("nan"),
    }


def highest_rate_within_deadline(rows: list[dict]) -> float | None:
    """The highest rate such that at it and every lower rate, every request finished within its deadline."""
    best = None
    for row in sorted(rows, key=lambda r: r["rate"]):
        if row["sent"] == 0 or row["within_deadline"] < 1.0:
            break
        best = row["rate"]
    return best


async def _wait_until_ready(client: httpx.AsyncClient, url: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if (await client.get(url + "/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no healthy server at {url} after {limit:g} s")
        await asyncio.sleep(1.0)


async def _wait_until_drained(client: httpx.AsyncClient, url: str, limit: float = 60.0) -> None:
    """Let the server finish (or abort) everything before the next rate starts."""
    deadline = time.monotonic() + limit
    while (await client.get(url + "/health")).json().get("in_flight", 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def warm_up(client: httpx.AsyncClient, url: str, prompts: dict[str, list[str]],
                  lengths: dict[str, LengthDistribution], *, timeout: float, headers: dict) -> None:
    """Prompts of every length in the set: short answers one at a time, then all at once with each
    task's longest answer.

    Whatever a first use of a size still costs the server (before the engine warmed itself up at
    start, an H100 stalled 0.5-3 s at the first long prompts) lands here, not in the first rate.
    """
    by_length = sorted(((p, task) for task in TASKS for p in prompts[task]), key=lambda pt: len(pt[0]))
    spread = [by_length[round(i * (len(by_length) - 1) / (WARM_UP_PROMPTS - 1))] for i in range(WARM_UP_PROMPTS)]
    alone = [PlannedRequest(0.0, task, prompt, WARM_UP_TOKENS) for prompt, task in spread]
    records = [await stream_request(client, url, req, start=0.0, timeout=timeout, headers=headers) for req in alone]
    together = [PlannedRequest(0.0, task, prompt, lengths[task].high) for prompt, task in spread]
    records += (await run_rate(client, url, together, timeout=timeout, headers=headers))[0]
    failed = [r["error"] for r in records if not r["ok"]]
    if failed:
        raise RuntimeError(f"{len(failed)} warm-up requests to {url} failed, e.g. {failed[0]}")
    await _wait_until_drained(client, url)


async def run_benchmark(url: str, rates: list[float], *, duration: float | None = None,
                        num_requests: int | None = None, seed: int = 0,
                        lengths: dict[str, LengthDistribution] = OUTPUT_LENGTHS, timeout: float = 600.0,
                        api_key: str | None = None, ready_limit: float = 300.0) -> tuple[list[dict], list[dict]]:
    """Run every rate in turn against the server at `url`; returns (one row per rate, every request's record)."""
    url = url.rstrip("/")
    prompts = load_prompts()
    headers = auth_headers(api_key)
    rows, records = [], []
    # Unbounded: a client-side pool would queue requests the benchmark means to send.
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                                 timeout=httpx.Timeout(timeout)) as client:
        await _wait_until_ready(client, url, ready_limit)
        await warm_up(client, url, prompts, lengths, timeout=timeout, headers=headers)
        for rate in rates:
            plan = plan_requests(prompts, rate, duration=duration, num_requests=num_requests, seed=seed,
                                 lengths=lengths)
            level, wall = await run_rate(client, url, plan, timeout=timeout, headers=headers)
            await _wait_until_drained(client, url)
            row = summarize_rate(rate, level, wall)
            print(f"rate {rate:g} req/s: {row['finished']}/{row['sent']} finished in {wall:.1f} s, "
                  f"{row['within_deadline']:.0%} within deadline", file=sys.stderr, flush=True)
            rows.append(row)
            records += [{"rate": rate, **r} for r in level]
    return rows, records


def print_report(rows: list[dict]) -> None:
    """The table, then the highest rate at which every request met its deadline."""
    print("rate and req/s in requests/s, out tok/s in output tokens/s, TTFT, TPOT and ITL in ms; deadlines "
          + ", ".join(f"{t} {s:g} s" for t, s in DEADLINE_S.items()))
    header = (f"{'rate':>7} {'sent':>6} {'done':>6} {'errors':>6} {'req/s':>7} {'out tok/s':>9} "
              f"{'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} {'p99':>7} {'ITL p50':>8} {'p99':>7} {'in deadline':>11}")
    print(header)
    for r in rows:
        ms = {k: r[k] * 1000 for k in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "itl_p50", "itl_p99")}
        print(f"{r['rate']:7g} {r['sent']:6d} {r['finished']:6d} {r['errors']:6d} {r['req_per_s']:7.2f} "
              f"{r['output_tok_per_s']:9.1f} {ms['ttft_p50']:9.1f} {ms['ttft_p99']:8.1f} {ms['tpot_p50']:9.2f} "
              f"{ms['tpot_p99']:7.2f} {ms['itl_p50']:8.2f} {ms['itl_p99']:7.2f} {r['within_deadline']:11.1%}")
    best = highest_rate_within_deadline(rows)
    print(f"highest rate with every request within its deadline: "
          f"{f'{best:g} req/s' if best is not None else 'none of the rates tried'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--rates", default="1,2,4,8,16", help="comma-separated arrival rates (requests/s), run in turn")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate")
    ap.add_argument("--num-requests", type=int, help="instead of --duration: this many requests per rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0, help="client timeout per request, as the course's")
    ap.add_argument("--api-key")
    ap.add_argument("--json", help="write the rows and every request's record here")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    duration = None if args.num_requests else args.duration
    rows, records = asyncio.run(run_benchmark(args.url, rates, duration=duration, num_requests=args.num_requests,
                                              seed=args.seed, timeout=args.timeout, api_key=args.api_key))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": "python -m bench.online_serving " + " ".join(sys.argv[1:] if argv is None else argv),
            "output_lengths": {t: dataclasses.asdict(d) for t, d in OUTPUT_LENGTHS.items()},
            "deadlines_s": DEADLINE_S, "rows": rows, "records": records}))
    print_report(rows)


if __name__ == "__main__":
    main()
