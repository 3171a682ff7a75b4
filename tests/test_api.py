"""The HTTP API over real HTTP on 127.0.0.1: the official openai client, streaming, n, stop, seeds,
routing fields, metrics, and 4xx answers with OpenAI-style bodies for malformed requests."""

import json

import httpx
import openai
import pytest

from tests.api_server import RunningServer

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    srv = RunningServer(["--model", str(tiny_model_dir), "--max-model-len", "256", "--api-key", KEY,
                         "--max-body-bytes", str(1 << 20)])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


MMLU = ("The following is a multiple choice question (with answers) about  college medicine.  Output the answer in "
        "the format of \"The answer is (X)\" at the end.\n\nQuestion: Which organ makes insulin?\n Options:\n"
        "A. Liver\nB. Pancreas\nC. Kidney\nD. Spleen\nAnswer:")


def test_completions_str_and_list(client, server):
    one = client.completions.create(model=server.service.names["large"], prompt="Hello there", max_tokens=5,
                                    temperature=0)
    assert len(one.choices) == 1 and one.choices[0].finish_reason in ("length", "stop")
    assert one.usage.completion_tokens <= 5 and one.usage.prompt_tokens > 0
    many = client.completions.create(model=server.service.names["large"], prompt=["a b c", MMLU, "x"],
                                     max_tokens=4, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    extra = [c.model_extra for c in many.choices]
    assert [e["prompt"] for e in extra] == ["a b c", MMLU, "x"]
    assert [e["task"] for e in extra] == ["general", "mmlu_med", "general"]
    assert many.model_extra["requests"] == 3 and many.model_extra["elapsed_time"] > 0
    # Greedy is deterministic whatever the batch.
    again = client.completions.create(model=server.service.names["large"], prompt="a b c", max_tokens=4,
                                      temperature=0)
    assert again.choices[0].text == many.choices[0].text


def test_streaming_completion_matches_whole(client, server):
    name = server.service.names["large"]
    whole = client.completions.create(model=name, prompt="Once upon", max_tokens=8, temperature=0)
    parts, finish, usage = [], None, None
    for chunk in client.completions.create(model=name, prompt="Once upon", max_tokens=8, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == whole.choices[0].text
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_chat_and_chat_streaming(client, server):
    name = server.service.names["large"]
    messages = [{"role": "user", "content": "Say hi"}]
    whole = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=name, messages=messages, max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(deltas) == whole.choices[0].message.content


def test_n_stop_and_seed(client, server):
    name = server.service.names["large"]
    r = client.completions.create(model=name, prompt="Count:", max_tokens=6, n=3, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    r2 = client.completions.create(model=name, prompt="Count:", max_tokens=6, n=3, temperature=1.0, seed=7)
    assert [c.text for c in r.choices] == [c.text for c in r2.choices]  # seeds reproduce
    assert len({c.text for c in r.choices}) > 1  # samples differ from one another
    base = client.completions.create(model=name, prompt="Count:", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = base.split()[len(base.split()) // 2]  # a word from the middle of the greedy answer
    cut = client.completions.create(model=name, prompt="Count:", max_tokens=12, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == base[:base.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_logprobs_and_echo(client, server):
    name = server.service.names["large"]
    r = client.completions.create(model=name, prompt="abc", max_tokens=3, temperature=0, logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 3 and all(len(t) <= 2 for t in lp.top_logprobs)
    assert all(x <= 0 for x in lp.token_logprobs)
    assert r.choices[0].text.startswith("abc")


def test_models_health_metrics(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(server.url + "/v1/models", headers=auth).json()
    assert models["object"] == "list" and models["data"][0]["id"] == server.service.names["large"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # public: a probe needs no key
    text = httpx.get(server.url + "/metrics", headers=auth).text
    for name in ("switchyard_queue_depth", "switchyard_kv_blocks_free", "switchyard_ttft_seconds_bucket",
                 "switchyard_tpot_seconds_bucket", "switchyard_e2e_seconds_bucket", "switchyard_preemptions_total",
                 "switchyard_prefix_cache_hit_rate", "switchyard_running_sequences", "switchyard_engine_alive",
                 'switchyard_admission_slots{state="in_use"}', "switchyard_generated_tokens_total",
                 "switchyard_requests_total", "switchyard_draft_tokens_total",
                 "switchyard_accepted_draft_tokens_total"):
        assert name in text, name


def test_health_turns_503_while_a_step_is_stalled(server):
    engine = server.service.engines["large"]
    engine.stalled_seconds = 131.4  # as the step loop's watchdog reports a step stuck for 131 s
    try:
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503, r.text
        assert r.json() == {"status": "unhealthy", "engines": sorted({role for role, e in
                                                                       server.service.engines.items() if e is engine}),
                            "stalled_step_seconds": {role: 131 for role, e in server.service.engines.items()
                                                     if e is engine}}
        text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert 'switchyard_stalled_step_seconds{model="large"} 131.4' in text
    finally:
        engine.stalled_seconds = 0.0  # the step ended
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/models", "/metrics"])
@pytest.mark.parametrize("authorization", [None, "Bearer nope", f"Bearer {KEY}x", f"bearer {KEY}", KEY])
def test_every_route_but_health_needs_the_key(server, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.get(server.url + path, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _bad_cases():
    ok = {"prompt": "hi", "max_tokens": 2}
    cases = [
        ("bad json", b"{not json", HEADERS, 400, "not valid JSON"),
        ("invalid utf-8", b'{"prompt": "\xff\xfe"}', HEADERS, 400, "not valid UTF-8"),
        ("NaN number", b'{"prompt": "hi", "temperature": NaN}', HEADERS, 400, "NaN"),
        ("array body", b"[1, 2]", HEADERS, 400, "JSON object"),
        ("no prompt", {"max_tokens": 3}, HEADERS, 400, "'prompt' is required"),
        ("prompt int", {"prompt": 5}, HEADERS, 400, "'prompt': must be"),
        ("prompt dict", {"prompt": {"a": 1}}, HEADERS, 400, "'prompt': must be"),
        ("prompt empty list", {"prompt": []}, HEADERS, 400, "'prompt': must be"),
        ("prompt mixed list", {"prompt": ["a", 1]}, HEADERS, 400, "'prompt': must be"),
        ("prompt empty string", {"prompt": ""}, HEADERS, 400, "prompt is empty"),
        ("token id out of range", {"prompt": [1, 10**9]}, HEADERS, 400, "outside the vocabulary"),
        ("too many prompts", {"prompt": ["a"] * 65}, HEADERS, 400, "too many completions in one request: 65 prompts"),
        ("over-long prompt", {"prompt": "word " * 400}, HEADERS, 400, "context limit"),
        ("max_tokens zero", {**ok, "max_tokens": 0}, HEADERS, 400, "'max_tokens'"),
        ("max_tokens negative", {**ok, "max_tokens": -1}, HEADERS, 400, "'max_tokens'"),
        ("max_tokens string", {**ok, "max_tokens": "10"}, HEADERS, 400, "'max_tokens'"),
        ("max_tokens float", {**ok, "max_tokens": 2.5}, HEADERS, 400, "'max_tokens'"),
        ("max_tokens bool", {**ok, "max_tokens": True}, HEADERS, 400, "'max_tokens'"),
        ("n zero", {**ok, "n": 0}, HEADERS, 400, "'n'"),
        ("n huge", {**ok, "n": 1000}, HEADERS, 400, "'n'"),
        ("temperature negative", {**ok, "temperature": -1}, HEADERS, 400, "'temperature'"),
        ("temperature string", {**ok, "temperature": "hot"}, HEADERS, 400, "'temperature'"),
        ("top_p zero", {**ok, "top_p": 0}, HEADERS, 400, "'top_p'"),
        ("top_k negative", {**ok, "top_k": -5}, HEADERS, 400, "'top_k'"),
        ("stop empty string", {**ok, "stop": ""}, HEADERS, 400, "'stop'"),
        ("stop too many", {**ok, "stop": ["a", "b", "c", "d", "e"]}, HEADERS, 400, "'stop'"),
        ("stream not bool", {**ok, "stream": "yes"}, HEADERS, 400, "'stream'"),
        ("stream_options without stream", {**ok, "stream_options": {"include_usage": True}}, HEADERS, 400,
         "only allowed when 'stream' is true"),
        ("logprobs too many", {**ok, "logprobs": 21}, HEADERS, 400, "'logprobs': Input should be less than or equal"),
        ("seed string", {**ok, "seed": "x"}, HEADERS, 400, "'seed'"),
        ("unknown field", {**ok, "temprature": 0.5}, HEADERS, 400, "unrecognized request argument"),
        ("penalty", {**ok, "presence_penalty": 1.0}, HEADERS, 400, "'presence_penalty' is not supported"),
        ("min_tokens above max", {**ok, "min_tokens": 5}, HEADERS, 400, "'min_tokens' (5) must not exceed"),
        ("unknown model", {**ok, "model": "gpt-17"}, HEADERS, 404, "does not exist"),
        ("huge body", {"prompt": "x" * (2 << 20)}, HEADERS, 413, "larger than"),
        ("wrong content type", b'{"prompt": "hi"}', {**HEADERS, "Content-Type": "text/plain"}, 415,
         "content-type must be application/json"),
        ("no api key", ok, {"Content-Type": "application/json"}, 401, "API key"),
        ("bad api key", ok, {**HEADERS, "Authorization": "Bearer nope"}, 401, "API key"),
        ("chat no messages", {"messages": []}, HEADERS, 400, "'messages': List should have at least 1 item",
         "/v1/chat/completions"),
        ("chat bad role", {"messages": [{"role": "robot", "content": "x"}]}, HEADERS, 400,
         "'messages.0.role': Input should be",
         "/v1/chat/completions"),
        ("chat content not string", {"messages": [{"role": "user", "content": 3}]}, HEADERS, 400,
         "'messages.0.content'", "/v1/chat/completions"),
    ]
    return cases


@pytest.mark.parametrize("case", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_malformed_requests_get_4xx_with_error_body(server, case):
    name, body, headers, status, message = case[:5]
    path = case[5] if len(case) > 5 else "/v1/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=content, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"], error
    assert set(error) >= {"message", "type", "param", "code"}


def test_server_keeps_answering_after_bad_input(server, client):
    r = client.completions.create(model=server.service.names["large"], prompt="still alive?", max_tokens=3)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert httpx.post(server.url + "/v1/nowhere", headers=HEADERS, content=b"{}").status_code == 404
    assert httpx.get(server.url + "/v1/completions", headers=HEADERS).status_code == 405
    assert server.settled()
