"""No request can hurt another request, stop the engine, or hold a slot: hostile requests against a
real server on 127.0.0.1, each sent while two innocent requests run (issue 9's reproductions, our own
hostile bodies, and hypothesis-generated ones), plus every way a request can end early."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.templates import mmlu_prompt
from tests.api_server import RunningServer

INNOCENT = [{"prompt": "The innocent request number one", "max_tokens": 48, "temperature": 0, "ignore_eos": True},
            {"prompt": "A second innocent prompt, longer", "max_tokens": 48, "temperature": 0, "ignore_eos": True}]
CONTEXT = 512


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    policy = tmp_path_factory.mktemp("policy") / "greedy.json"
    policy.write_text(json.dumps({t: {"sampling": {"temperature": 0.0}} for t in ("graph", "mmlu_med", "infobench")}))
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", str(CONTEXT), "--policy", str(policy)])
    yield srv
    srv.stop()


class Innocents:
    """Two innocent requests sent over and over from threads, each answer checked against the same
    request served alone."""

    _expected: dict[str, list[str]] = {}  # per server: each innocent's answer when served alone

    def __init__(self, server: RunningServer):
        self.server = server
        if server.url not in self._expected:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                self._expected[server.url] = [c.post("/v1/completions", json=body).json()["choices"][0]["text"]
                                              for body in INNOCENT]
        self.expected = self._expected[server.url]
        self.results: list[tuple[int, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(2)]

    def _loop(self, i: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=60) as c:
            while not self._stop.is_set():
                r = c.post("/v1/completions", json=INNOCENT[i])
                self.results.append((r.status_code, r.status_code == 200 and
                                     r.json()["choices"][0]["text"] == self.expected[i]))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def wait_running(self) -> None:
        """Until both innocents are admitted (hold slots) on the server."""
        deadline = time.monotonic() + 10
        while self.server.service.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert self.server.service.in_flight >= 2, "the innocent requests are not running"

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _post(server, body, path="/v1/completions", headers=None) -> tuple[httpx.Response, float]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    start = time.monotonic()
    r = httpx.post(server.url + path, content=content, timeout=30,
                   headers=headers or {"Content-Type": "application/json"})
    return r, time.monotonic() - start


def _assert_refused(r: httpx.Response, elapsed: float, fragment: str = "") -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"], error
    assert elapsed < 1.0, f"refused only after {elapsed:.2f} s"


def _mmlu_prompt_of(tokens: int, tokenizer) -> str:
    """An MMLU-format prompt whose chat-templated form has exactly `tokens` tokens."""
    question = "Which organ secretes insulin in a patient with a long history of"
    while True:
        prompt = mmlu_prompt("college_medicine", question, ["Liver", "Pancreas", "Kidney", "Spleen"])
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        length = len(tokenizer(text).input_ids)
        if length == tokens:
            return prompt
        assert length < tokens, f"no MMLU prompt of exactly {tokens} tokens"
        question += " a"


def _hostile_cases(tokenizer):
    """(name, body, path, expected message fragment): issue 9's reproductions first, then our own."""
    chat = "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("lone surrogate", b'{"prompt": "abc\\ud800", "max_tokens": 3}', None, "invalid Unicode"),
        ("stop id past vocabulary with min_tokens", {"prompt": "x", "stop_token_ids": [1000000], "min_tokens": 2},
         None, "vocabulary"),
        ("top_k 1e23", {"prompt": "x", "top_k": 1e23, "temperature": 1}, None, "'top_k'"),
        ("nested 100,000 deep", deep, None, "nests"),
        ("400-digit temperature", b'{"prompt": "x", "temperature": ' + b"9" * 400 + b"}", None, "400 digits"),
        ("template kwargs tokenize", {"messages": msgs, "chat_template_kwargs": {"tokenize": True}}, chat,
         "tokenize"),
        ("client chat template", {"messages": msgs, "chat_template": "{% for i in range(10**9) %}{% endfor %}"}, chat,
         "--trust-request-chat-template"),
        ("4 MB prompt", {"prompt": "x" * 4_000_000}, None, "bytes"),
        ("max_tokens 1e9 (float)", {"prompt": "x", "max_tokens": 1e9}, None, "'max_tokens'"),
        ("max_tokens 10**9", {"prompt": "x", "max_tokens": 10**9}, None, "context limit is 512"),
        ("64 prompts x n=4", {"prompt": ["x"] * 64, "n": 4, "max_tokens": 1}, None, "too many completions"),
        ("priority -100", {"prompt": "x", "priority": -100}, None, "'priority'"),
        # our own
        ("NaN", b'{"prompt": "x", "temperature": NaN}', None, "NaN"),
        ("Infinity", b'{"prompt": "x", "top_p": Infinity}', None, "Infinity"),
        ("1e999", b'{"prompt": "x", "temperature": 1e999}', None, "out of range"),
        ("min_p negative", {"prompt": "x", "min_p": -0.5}, None, "'min_p'"),
        ("top_k past vocabulary", {"prompt": "x", "top_k": 10**6, "temperature": 1}, None, "top_k"),
        ("negative token id", {"prompt": [1, -1]}, None, "'prompt'"),
        ("token id past vocabulary", {"prompt": [[1, 2], [3, 10**7]]}, None, "vocabulary"),
        ("empty token list", {"prompt": [[]]}, None, "'prompt'"),
        ("empty prompt", {"prompt": ""}, None, "empty"),
        ("float token ids", {"prompt": [1.5, 2]}, None, "'prompt'"),
        ("logprobs 21", {"prompt": "x", "logprobs": 21}, None, "'logprobs'"),
        ("five stop strings", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, None, "'stop'"),
        ("long stop string", {"prompt": "x", "stop": "s" * 1000}, None, "'stop"),
        ("many stop ids", {"prompt": "x", "stop_token_ids": list(range(100))}, None, "'stop_token_ids'"),
        ("seed 2**64", {"prompt": "x", "seed": 2**64}, None, "'seed'"),
        ("n 0", {"prompt": "x", "n": 0}, None, "'n'"),
        ("priority 101", {"prompt": "x", "priority": 101}, None, "'priority'"),
        ("ignore_eos string", {"prompt": "x", "ignore_eos": "yes"}, None, "'ignore_eos'"),
        ("stream_options without stream", {"prompt": "x", "stream_options": {"include_usage": True}}, None,
         "stream_options"),
        ("logit_bias", {"prompt": "x", "logit_bias": {"1": 100}}, None, "'logit_bias' is not supported"),
        ("tools", {"messages": msgs, "tools": [{"type": "function"}]}, chat, "'tools' is not supported"),
        ("response_format json", {"messages": msgs, "response_format": {"type": "json_object"}}, chat,
         "'response_format'"),
        ("best_of 2", {"prompt": "x", "best_of": 2}, None, "'best_of'"),
        ("tool role", {"messages": [{"role": "tool", "content": "x"}]}, chat, "role"),
        ("content object", {"messages": [{"role": "user", "content": {"a": 1}}]}, chat, "content"),
        ("template kwarg nested", {"messages": msgs, "chat_template_kwargs": {"x": {"y": 1}}}, chat,
         "chat_template_kwargs"),
        ("template kwarg chat_template", {"messages": msgs, "chat_template_kwargs": {"chat_template": "{{1}}"}},
         chat, "chat_template"),
        ("huge model name", {"prompt": "x", "model": "m" * 10_000}, None, "'model'"),
        ("unknown model", {"prompt": "x", "model": "gpt-17"}, None, "does not exist"),
        ("unknown field", {"prompt": "x", "temprature": 0}, None, "unrecognized"),
        ("body null", b"null", None, "JSON object"),
        ("body number", b"12", None, "JSON object"),
        ("invalid UTF-8", b'{"prompt": "\xff"}', None, "UTF-8"),
        ("truncated JSON", b'{"prompt": "x"', None, "not valid JSON"),
        ("MMLU prompt that fills the context", {"prompt": _mmlu_prompt_of(CONTEXT, tokenizer)}, None,
         "context limit"),
    ]


def test_hostile_requests_fail_alone(server):
    cases = _hostile_cases(server.service.engines["large"].tokenizer)
    assert len(cases) >= 40
    with Innocents(server) as innocents:
        for name, body, path, fragment in cases:
            innocents.wait_running()
            r, elapsed = _post(server, body, path or "/v1/completions")
            _assert_refused(r, elapsed, fragment)
            assert httpx.get(server.url + "/health").status_code == 200, name
    assert len(innocents.results) >= 4 and all(ok for _, ok in innocents.results), innocents.results
    assert server.settled()


_FIELD_VALUES = {
    "prompt": st.one_of(st.text(max_size=20), st.lists(st.integers(-5, 50_000), max_size=5), st.none(),
                        st.lists(st.text(max_size=5), max_size=3), st.integers(), st.floats()),
    "max_tokens": st.one_of(st.integers(-3, 4), st.floats(allow_nan=False), st.booleans(), st.text(max_size=3)),
    "temperature": st.one_of(st.floats(-3, 5, allow_nan=False), st.integers(-2, 3), st.text(max_size=3)),
    "top_p": st.one_of(st.floats(-1, 2, allow_nan=False), st.none()),
    "top_k": st.one_of(st.integers(-3, 10**7), st.floats(allow_nan=False)),
    "n": st.one_of(st.integers(-1, 100), st.booleans()),
    "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=6), st.integers()),
    "stop_token_ids": st.lists(st.integers(-2, 10**7), max_size=4),
    "seed": st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=2)),
    "logprobs": st.one_of(st.integers(-2, 30), st.booleans()),
    "stream": st.one_of(st.booleans(), st.integers(0, 2)),
    "priority": st.integers(-200, 200),
    "echo": st.one_of(st.booleans(), st.text(max_size=2)),
}
# A field that cannot be valid, so every generated body must be refused.
_ALWAYS_BAD = st.sampled_from([("min_p", 3), ("n", 0), ("temperature", -1), ("presence_penalty", 2),
                               ("frequency_penalty", "x"), ("suffix", "s"), ("nonsense", 1), ("priority", -1),
                               ("max_tokens", 0), ("logprobs", 99), ("top_p", 0)])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: _FIELD_VALUES[k] for k in keys})), bad=_ALWAYS_BAD)
def test_generated_hostile_bodies_are_refused(server, fields, bad):
    body = {"prompt": "x", **fields, bad[0]: bad[1]}
    with Innocents(server) as innocents:
        innocents.wait_running()
        r, elapsed = _post(server, body)
        _assert_refused(r, elapsed)
    assert all(ok for _, ok in innocents.results), innocents.results
    assert httpx.get(server.url + "/health").status_code == 200


def test_mmlu_enforcement_never_exceeds_the_context(server):
    """A prompt that leaves room for a one-token answer but not for the cue of the enforced letter:
    the answer comes back unenforced, not as a 500."""
    tokenizer = server.service.engines["large"].tokenizer
    prompt = _mmlu_prompt_of(CONTEXT - 1, tokenizer)
    r, _ = _post(server, {"prompt": prompt, "max_tokens": 1, "ignore_eos": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["task"] == "mmlu_med" and choice["completion_tokens"] == 1  # no letter was generated
    assert server.settled()


def test_sixteen_lone_surrogates_leak_no_slot(server):
    for _ in range(16):
        r, elapsed = _post(server, b'{"prompt": "abc\\ud800", "max_tokens": 3}')
        _assert_refused(r, elapsed, "invalid Unicode")
    assert server.service.in_flight == 0
    r, _ = _post(server, {"prompt": "still serving", "max_tokens": 2})
    assert r.status_code == 200


def test_client_chat_templates_are_sandboxed(tiny_model_dir):
    """With --trust-request-chat-template a client's template renders in a limited child process: a
    plain one works, one that loops, eats memory or reaches Python internals gets a 400."""
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", str(CONTEXT),
                         "--trust-request-chat-template"])
    msgs = [{"role": "user", "content": "hi"}]
    try:
        ok, _ = _post(srv, {"messages": msgs, "max_tokens": 2,
                            "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
                      "/v1/chat/completions")
        assert ok.status_code == 200, ok.text
        for template, fragment in [("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                    "{% endfor %}", "longer than"),
                                   ("{{ 'x' * 1000000000 }}", "memory"),
                                   ("{{ ().__class__.__base__.__subclasses__() }}", "unsafe"),
                                   ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recurses")]:
            r, elapsed = _post(srv, {"messages": msgs, "chat_template": template}, "/v1/chat/completions")
            assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
            assert elapsed < 5
        assert httpx.get(srv.url + "/health").status_code == 200 and srv.settled()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir):
    """Three admission slots and a 1.5 s request deadline, so every early ending is quick to reach."""
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", "4096", "--max-queued-prompts", "3",
                         "--request-timeout", "1.5"])
    yield srv
    srv.stop()


LONG = {"prompt": "a long answer", "max_tokens": 3000, "ignore_eos": True}


def _status_count(server, status: int) -> float:
    text = httpx.get(server.url + "/metrics").text
    line = f'switchyard_requests_total{{endpoint="/v1/completions",status="{status}"}}'
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


def test_timeout_504_releases_everything(strict_server):
    r, elapsed = _post(strict_server, LONG)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout" and 1.4 < elapsed < 5
    with httpx.stream("POST", strict_server.url + "/v1/completions", json={**LONG, "stream": True}, timeout=30) as s:
        lines = [line for line in s.iter_lines() if line]
    assert "timed out" in lines[-2] and lines[-1] == "data: [DONE]"
    assert strict_server.settled()


def test_capacity_429_takes_no_slot(strict_server):
    with Innocents(strict_server) as innocents:  # two slots held
        innocents.wait_running()
        r, _ = _post(strict_server, {"prompt": ["a", "b"], "max_tokens": 2})  # needs two more: one is left
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    assert strict_server.settled()


def test_client_disconnect_499_aborts_the_generation(strict_server):
    before = _status_count(strict_server, 499)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(strict_server.url + "/v1/completions", json=LONG, timeout=0.5)
    deadline = time.monotonic() + 5
    while _status_count(strict_server, 499) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _status_count(strict_server, 499) == before + 1
    assert strict_server.settled(timeout=2)  # aborted, not generated to its 3000 tokens


def test_stream_disconnect_mid_generation_aborts(strict_server):
    with httpx.stream("POST", strict_server.url + "/v1/completions", json={**LONG, "stream": True}) as s:
        chunks = 0
        for line in s.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 3:
                break  # hang up three tokens in
    assert strict_server.settled(timeout=2)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_request_fails_alone_over_http(server, monkeypatch, stream):
    """A request whose own data breaks the engine (here: the text of its tokens) gets a 500, or an
    error event when streamed; the innocents running beside it are unchanged and nothing leaks."""
    from scheduler import detokenizer, engine
    incremental, whole = detokenizer.IncrementalDetokenizer.add, detokenizer.decode_output

    def add(self, token_id):
        if self.params.seed == 666:
            raise RuntimeError("injected detokenizer fault")
        return incremental(self, token_id)

    def decode_output(tokenizer, prompt_ids, output_ids, params, token_bytes=None):
        if params.seed == 666:
            raise RuntimeError("injected detokenizer fault")
        return whole(tokenizer, prompt_ids, output_ids, params, token_bytes)

    monkeypatch.setattr(detokenizer.IncrementalDetokenizer, "add", add)
    monkeypatch.setattr(engine, "decode_output", decode_output)
    body = {"prompt": "doomed", "max_tokens": 8, "seed": 666, "temperature": 0, "stream": stream}
    with Innocents(server) as innocents:
        innocents.wait_running()
        r, _ = _post(server, body)
        if stream:
            events = [line for line in r.text.splitlines() if line]
            assert r.status_code == 200 and events[-1] == "data: [DONE]"
            assert "injected detokenizer fault" in json.loads(events[-2][6:])["error"]["message"]
        else:
            assert r.status_code == 500 and "injected detokenizer fault" in r.json()["error"]["message"]
    assert all(ok for _, ok in innocents.results) and httpx.get(server.url + "/health").status_code == 200
    assert server.settled()
