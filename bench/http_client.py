"""The benchmark's HTTP client: a fixed request set sent to a running server as completions of token-id
prompts (greedy, `ignore_eos`), unstreamed or streamed, from one process or several that start together.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable

import httpx

Request = tuple[list[int], int]  # (prompt token ids, output tokens)
WARM_UP_PROMPTS, WARM_UP_TOKENS = 4, 8
# The server, its engine and the client share the machine: one client process per 4 CPUs, at most 4.
DEFAULT_CLIENT_PROCESSES = max(1, min(4, (os.cpu_count() or 1) // 4))


async def _send(client: httpx.AsyncClient, url: str, batch: list[Request], stream: bool) -> int:
    """One completion request for the batch (all its prompts share one max_tokens); returns its output tokens."""
    body = {"prompt": [ids for ids, _ in batch], "max_tokens": batch[0][1], "temperature": 0, "ignore_eos": True}
    if not stream:
        r = await client.post(url + "/v1/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return r.json()["usage"]["completion_tokens"]
    body.update(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:300]}")
        tokens = None
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return tokens


async def _timed_run(url: str, batches: list[list[Request]], stream: bool, concurrency: int, timeout: float,
                     ready: Callable[[], None] | None = None) -> tuple[float, float, int]:
    """Warm up, call `ready()` (a barrier shared with other client processes), then send every batch
    (at most `concurrency` at a time; 0: all at once). Returns (start, end, output tokens) on the
    system-wide monotonic clock, so spans from several processes compare."""
    limit = asyncio.Semaphore(concurrency or max(len(batches), 1))
    # Unbounded: a client-side pool would queue requests the benchmark means to have in flight.
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                                 timeout=httpx.Timeout(timeout)) as client:
        warm_up = [(ids, WARM_UP_TOKENS) for batch in batches for ids, _ in batch][:WARM_UP_PROMPTS]
        await _send(client, url, warm_up, stream)
        if ready is not None:
            ready()

        async def fire(batch):
            async with limit:
                return await _send(client, url, batch, stream)

        start = time.monotonic()
        tokens = await asyncio.gather(*(fire(b) for b in batches))
        return start, time.monotonic(), sum(tokens)


async def served_run(url: str, batches: list[list[Request]], *, stream: bool, concurrency: int = 0,
                     timeout: float = 3600.0) -> tuple[float, int]:
    """Warm up, then send every batch from this process. Returns (seconds from the first send to the
    last answer, output tokens)."""
    start, end, tokens = await _timed_run(url, batches, stream, concurrency, timeout)
    return end - start, tokens


def _client_process(url, batches, stream, concurrency, timeout, barrier, results) -> None:
    try:
        results.put(asyncio.run(_timed_run(url, batches, stream, concurrency, timeout, barrier.wait)))
    except BaseException as e:
        barrier.abort()  # the other clients must not wait for this one
        results.put(e)


def served_run_split(url: str, batches: list[list[Request]], *, stream: bool, concurrency: int = 0,
                     timeout: float = 3600.0, processes: int = 1) -> tuple[float, int]:
    """served_run with the requests dealt round-robin to `processes` client processes that start
    together: one Python client parsing every SSE event of a fast server is itself the bottleneck
    (about 50 µs per event with httpx), so at engine speed the streamed figure would measure the
    client. Returns (seconds from the first send in any process to the last answer, output tokens)."""
    processes = max(1, min(processes, len(batches)))
    if processes == 1:
        return asyncio.run(served_run(url, batches, stream=stream, concurrency=concurrency, timeout=timeout))
    ctx = multiprocessing.get_context("spawn")  # no inherited CUDA or event-loop state
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    share = -(-concurrency // processes) if concurrency else 0
    workers = [ctx.Process(target=_client_process, daemon=True,
                           args=(url, batches[i::processes], stream, share, timeout, barrier, results))
               for i in range(processes)]
    for w in workers:
        w.start()
    spans = []
    try:
        while len(spans) < len(workers):
            try:
                spans.append(results.get(timeout=1.0))
            except queue.Empty:
                if not any(w.is_alive() for w in workers) and results.empty():  # died without a word
                    spans.append(RuntimeError(f"exit codes {[w.exitcode for w in workers]}"))
                    break
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    failures = [s for s in spans if isinstance(s, BaseException)]
    if failures:  # the cause, not the broken barrier it left the others
        cause = next((f for f in failures if not isinstance(f, threading.BrokenBarrierError)), failures[0])
        raise RuntimeError(f"a client process failed: {type(cause).__name__}: {cause}") from cause
    return max(s[1] for s in spans) - min(s[0] for s in spans), sum(s[2] for s in spans)
