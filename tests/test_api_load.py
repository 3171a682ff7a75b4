"""Acceptance 3, 5 and 6 of the HTTP API: a load test with disconnecting clients, the sample trace
replay, and per-task priority under saturation — all over real HTTP on 127.0.0.1."""

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import pytest

from bench.replay import fixed_concurrency, load_trace, percentile, replay, summarize
from tests.api_server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
TRACE = load_trace(ROOT / "data/course/batch_arrivals.json")
PROMPTS = [p for b in TRACE for p in b["prompts"]]
MAX_TOKENS = 6


def _greedy_policy(tmp_path) -> str:
    # Every task greedy, so each response can be checked against the same prompt served alone.
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({t: {"sampling": {"temperature": 0.0}} for t in ("graph", "mmlu_med", "infobench")}))
    return str(path)


@pytest.fixture(scope="module")
def load_server(tiny_model_dir, tmp_path_factory):
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", "4096",
                         "--policy", _greedy_policy(tmp_path_factory.mktemp("policy"))])
    yield srv
    srv.stop()


def test_load_with_disconnects_loses_nothing(load_server):
    url = load_server.url + "/v1/completions"
    rng = random.Random(0)
    distinct = rng.sample(PROMPTS, 40)
    with httpx.Client(timeout=120) as c:  # each prompt alone: the reference answer
        expected = {p: c.post(url, json={"prompt": p, "max_tokens": MAX_TOKENS}).json()["choices"][0]["text"]
                    for p in distinct}
    requests = [rng.sample(distinct, rng.randint(1, 8)) for _ in range(500)]
    disconnect = set(rng.sample(range(500), 50))
    results = {}

    async def client(worker, queue, http):
        while not queue.empty():
            i = queue.get_nowait()
            body = {"prompt": requests[i], "max_tokens": MAX_TOKENS}
            if i in disconnect:  # read the first event of a long stream, then hang up mid-generation
                long = {**body, "max_tokens": 2000, "ignore_eos": True, "stream": True}
                async with http.stream("POST", url, json=long) as r:
                    async for _ in r.aiter_lines():
                        break
                continue
            r = await http.post(url, json=body)
            assert i not in results  # exactly one response per request
            results[i] = (r.status_code, r.json())

    async def main():
        queue = asyncio.Queue()
        for i in range(500):
            queue.put_nowait(i)
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as http:
            await asyncio.gather(*(client(w, queue, http) for w in range(64)))

    asyncio.run(main())
    assert set(results) == set(range(500)) - disconnect
    for i, (status, body) in results.items():
        assert status == 200, body
        assert [c["index"] for c in body["choices"]] == list(range(len(requests[i])))
        assert [c["prompt"] for c in body["choices"]] == requests[i]
        assert [c["text"] for c in body["choices"]] == [expected[p] for p in requests[i]]
        assert body["requests"] == len(requests[i])
    # The 50 hung-up streams asked for 2,000 tokens each: only their aborts can free the pool this soon.
    assert load_server.settled(timeout=10)
    assert httpx.get(load_server.url + "/health").json()["status"] == "ok"


def test_fixed_concurrency_generator(load_server):
    records = asyncio.run(fixed_concurrency(load_server.url, PROMPTS[:30], concurrency=8, num_requests=24,
                                            max_tokens=4))
    summary = summarize(records, window=600)
    assert summary["served_in_window"] == 24 and summary["errors"] == 0
    span = max(r["sent"] + r["latency"] for r in records) - min(r["sent"] for r in records)
    assert summary["span_s"] == span and summary["output_tok_per_s"] == summary["completion_tokens"] / span > 0


def test_replay_sample_trace_on_embedded_model():
    """The official sample trace (6 prompts) against the embedded model; max_tokens is capped at 48
    to keep CI short (the full run is in BENCHMARKS.md)."""
    srv = RunningServer(["--model", "embedded"])
    try:
        batches = load_trace(ROOT / "data/course/batch_arrivals_sample.json")
        records = asyncio.run(replay(srv.url, batches, time_scale=0.05, max_tokens=48))
        summary = summarize(records, window=1200)
    finally:
        srv.stop()
    assert summary["prompts_served_in_window"] == 6 and summary["errors"] == 0
    assert set(summary["latency"]) == {"graph", "mmlu_med", "infobench"}
    assert all(s["p50"] > 0 for s in summary["latency"].values())


def test_priority_under_saturation(tiny_model_dir, tmp_path):
    """MMLU (priority 0) waits less than InfoBench (priority 2) when only 2 sequences run at once,
    and InfoBench still finishes."""
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", "4096", "--max-num-seqs", "2",
                         "--policy", _greedy_policy(tmp_path)])
    mmlu = [p for b in TRACE for p, i in zip(b["prompts"], b["prompt_idxs"]) if i >= 200][:16]
    info = [p for b in TRACE for p, i in zip(b["prompts"], b["prompt_idxs"]) if 100 <= i < 200][:16]
    url = srv.url + "/v1/completions"

    async def first_token_delay(http, prompt):
        start = time.monotonic()
        async with http.stream("POST", url, json={"prompt": prompt, "max_tokens": 8, "stream": True}) as r:
            delay = None
            async for line in r.aiter_lines():
                if line.startswith("data: {") and delay is None:
                    delay = time.monotonic() - start
            return delay

    async def main():
        async with httpx.AsyncClient(timeout=300) as http:
            # Interleaved arrivals, InfoBench first in each pair.
            tasks = []
            for a, b in zip(info, mmlu):
                tasks.append(asyncio.create_task(first_token_delay(http, a)))
                tasks.append(asyncio.create_task(first_token_delay(http, b)))
                await asyncio.sleep(0.005)
            delays = await asyncio.gather(*tasks)
            return delays[0::2], delays[1::2]

    try:
        info_delays, mmlu_delays = asyncio.run(main())
    finally:
        srv.stop()
    assert all(d is not None for d in info_delays + mmlu_delays)  # everyone finished: no starvation
    assert percentile(mmlu_delays, 50) < percentile(info_delays, 50)
