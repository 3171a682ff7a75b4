"""Acceptance 2 of issue 12: the course's client against `python -m api`, over real HTTP. It POSTs
{"prompt": str | [str], "max_tokens": 2048} to the bare URL (`/`) and reads each choice's `text`
(generated text only), `prompt`, `index`, `finish_reason`, the `usage` and the system's `model` name."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from bench.replay import completions_url, load_trace, replay, summarize
from tests.api_server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_NAME = "andrewid-system-1"


def greedy_policy(path: Path) -> str:
    """A policy file: every task greedy (answers are deterministic) and capped at 16 tokens (CI is short)."""
    path.write_text(json.dumps({t: {"sampling": {"temperature": 0.0}, "max_tokens": 16}
                                for t in ("graph", "mmlu_med", "infobench", "general")}))
    return str(path)


def course_prompts() -> dict[str, str]:
    """One real prompt per course task from the course's trace; the InfoBench one is short, so the
    default policy sends it to the small model."""
    found = {}
    for batch in load_trace(ROOT / "data/course/batch_arrivals.json"):
        for prompt, idx in zip(batch["prompts"], batch["prompt_idxs"]):
            task = "graph" if idx < 100 else "infobench" if idx < 200 else "mmlu_med"
            if task != "infobench" or len(prompt) < 100:
                found.setdefault(task, prompt)
    return found


@pytest.fixture(scope="module")
def course_server(tiny_model_dir, tmp_path_factory):
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", "4096", "--served-model-name",
                         SYSTEM_NAME, "--policy", greedy_policy(tmp_path_factory.mktemp("policy") / "p.json")])
    yield srv
    srv.stop()


def test_course_body_on_the_bare_url(course_server):
    prompts = list(course_prompts().values())
    with httpx.Client(base_url=course_server.url, timeout=120) as http:
        r = http.post("/", json={"prompt": prompts, "max_tokens": 2048})
        single = http.post("/", json={"prompt": prompts[0], "max_tokens": 2048})
        alone = [http.post("/v1/completions", json={"prompt": p, "max_tokens": 2048}).json() for p in prompts]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == SYSTEM_NAME
    assert [c["index"] for c in body["choices"]] == list(range(len(prompts)))
    assert [c["prompt"] for c in body["choices"]] == prompts
    for choice, prompt in zip(body["choices"], prompts):
        assert isinstance(choice["text"], str) and prompt not in choice["text"]
        assert choice["finish_reason"] in ("stop", "length")
    # Each choice is the prompt's own answer: the same text as the prompt served alone.
    assert [c["text"] for c in body["choices"]] == [a["choices"][0]["text"] for a in alone]
    usage = body["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert single.status_code == 200
    assert single.json()["model"] == SYSTEM_NAME
    assert [c["text"] for c in single.json()["choices"]] == [body["choices"][0]["text"]]


def _served(server, route: str) -> float:
    """Requests the server answered 200 on `route`, from its own metrics."""
    line = f'switchyard_requests_total{{endpoint="{route}",status="200"}} '
    text = httpx.get(server.url + "/metrics").text
    return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), 0.0)


def test_replay_posts_to_the_url_it_is_given(course_server):
    assert completions_url("https://ws--andrewid-system-1-model-completions.modal.run") == \
        "https://ws--andrewid-system-1-model-completions.modal.run/"
    assert completions_url("http://127.0.0.1:8000/v1/completions") == "http://127.0.0.1:8000/v1/completions"
    batches = load_trace(ROOT / "data/course/batch_arrivals_sample.json")
    for url, route in ((course_server.url, "/"), (course_server.url + "/v1/completions", "/v1/completions")):
        before = _served(course_server, route)
        summary = summarize(asyncio.run(replay(url, batches, time_scale=0.01)), window=600)
        assert summary["errors"] == 0 and summary["prompts_served_in_window"] == 6, summary
        assert _served(course_server, route) - before == len(batches)
