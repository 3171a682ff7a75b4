"""The online-serving benchmark against a real server on 127.0.0.1: the tiny model, its tokenizer copied
by `bench.copy_tokenizer` (as a GPU run copies it), two small Poisson rates and short outputs."""

import asyncio

import pytest

from bench.copy_tokenizer import copy_tokenizer
from bench.online_serving import LengthDistribution, plan_requests, print_report, run_benchmark
from tests.api_server import RunningServer

SHORT = {task: LengthDistribution(median=4, sigma=0.5, low=2, high=8) for task in ("graph", "mmlu_med", "infobench")}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    tokenizer = copy_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    srv = RunningServer(["--model", str(tiny_model_dir), "--tokenizer", str(tokenizer), "--max-model-len", "4096"])
    yield srv
    srv.stop()


def test_plans_are_seeded_poisson_and_shared_across_rates():
    prompts = {"graph": ["g"], "mmlu_med": ["m"], "infobench": ["i"]}
    slow = plan_requests(prompts, 1.0, num_requests=50, seed=3, lengths=SHORT)
    fast = plan_requests(prompts, 4.0, num_requests=50, seed=3, lengths=SHORT)
    assert [(r.task, r.max_tokens) for r in slow] == [(r.task, r.max_tokens) for r in fast]
    assert all(abs(a.arrival - 4 * b.arrival) < 1e-9 for a, b in zip(slow, fast))
    assert all(2 <= r.max_tokens <= 8 for r in slow)
    timed = plan_requests(prompts, 4.0, duration=10.0, seed=3, lengths=SHORT)
    assert timed and timed[-1].arrival <= 10.0 and timed == fast[:len(timed)]


def test_benchmark_streams_every_request_and_reports(server, capsys):
    rows, records = asyncio.run(run_benchmark(server.url, [2.0, 4.0], num_requests=6, seed=0, lengths=SHORT,
                                              timeout=120))
    assert [r["rate"] for r in rows] == [2.0, 4.0] and len(records) == 12
    for r in records:
        assert r["ok"], r["error"]
        assert r["completion_tokens"] == r["max_tokens"]           # ignore_eos: exactly what was drawn
        assert r["served_task"] == r["task"]                       # the router labelled the unlabelled prompt
        assert 0 < r["ttft"] <= r["latency"]
        assert len(r["itl"]) <= r["max_tokens"] - 1                 # at most one chunk per token
    for row in rows:
        assert row["finished"] == row["sent"] == 6 and row["errors"] == 0
        assert row["req_per_s"] > 0 and row["output_tok_per_s"] > 0
        for metric in ("ttft", "tpot", "itl"):
            assert 0 <= row[f"{metric}_p50"] <= row[f"{metric}_p99"]
    assert server.service.in_flight == 0
    print_report(rows)
    out = capsys.readouterr().out
    assert "TTFT p50" in out and out.count("\n") == 2 + len(rows) + 1
    assert "highest rate with every request within its deadline:" in out
