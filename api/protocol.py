"""Parsing and validating OpenAI completion and chat requests into one normalised form."""

from __future__ import annotations

import dataclasses
import math

from api.errors import bad_request

MAX_PROMPTS = 64        # per request (the course sends 1-8)
MAX_N = 16
MAX_STOP = 4
MAX_LOGPROBS = 5        # what OpenAI's completions API allows


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# Sampling fields a request may set: name -> (check, what a valid value is).
_SAMPLING = {
    "max_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "min_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: _is_int(v) and v >= -1, "-1, 0 or a positive integer"),
    "min_p": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "seed": (lambda v: _is_int(v) and -(2**63) <= v < 2**64, "an integer"),
    "ignore_eos": (lambda v: isinstance(v, bool), "a boolean"),
    "stop_token_ids": (lambda v: isinstance(v, list) and all(_is_int(t) and t >= 0 for t in v), "a list of token ids"),
}
_COMMON = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "n": (lambda v: _is_int(v) and 1 <= v <= MAX_N, f"an integer in [1, {MAX_N}]"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: v is None or (isinstance(v, dict) and set(v) <= {"include_usage"}
                                               and isinstance(v.get("include_usage", False), bool)),
                       'an object like {"include_usage": true}'),
    "stop": (lambda v: v is None or (isinstance(v, str) and v) or (
        isinstance(v, list) and len(v) <= MAX_STOP and all(isinstance(s, str) and s for s in v)),
        f"a non-empty string or a list of at most {MAX_STOP} non-empty strings"),
    "priority": (lambda v: _is_int(v) and -100 <= v <= 100, "an integer in [-100, 100]"),
    "user": (lambda v: isinstance(v, str), "a string"),
    # Accepted for compatibility only at their neutral values.
    "presence_penalty": (lambda v: v == 0, "0 (penalties are not supported)"),
    "frequency_penalty": (lambda v: v == 0, "0 (penalties are not supported)"),
    "logit_bias": (lambda v: v in (None, {}), "empty (logit_bias is not supported)"),
}
_COMPLETION_ONLY = {
    "prompt": (lambda v: True, ""),
    "echo": (lambda v: isinstance(v, bool), "a boolean"),
    "logprobs": (lambda v: v is None or (_is_int(v) and 0 <= v <= MAX_LOGPROBS), f"an integer in [0, {MAX_LOGPROBS}]"),
    "best_of": (lambda v: v is None or v == 1, "1 (best_of is not supported)"),
    "suffix": (lambda v: v is None, "null (suffix is not supported)"),
}
_CHAT_ONLY = {
    "messages": (lambda v: True, ""),
    "max_completion_tokens": _SAMPLING["max_tokens"],
    "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
    "top_logprobs": (lambda v: _is_int(v) and 0 <= v <= MAX_LOGPROBS, f"an integer in [0, {MAX_LOGPROBS}]"),
    "chat_template_kwargs": (lambda v: isinstance(v, dict), "an object"),
}


@dataclasses.dataclass(slots=True)
class GenerationRequest:
    """A validated request: prompts (text or token ids, or chat conversations) and what was asked."""

    prompts: list
    sampling: dict                  # only the sampling fields the client set
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None
    priority: int | None = None
    model: str | None = None
    chat: bool = False
    chat_template_kwargs: dict = dataclasses.field(default_factory=dict)


def _check_fields(body: dict, specs: dict) -> None:
    for name, value in body.items():
        if name not in specs:
            raise bad_request(f"unrecognized request argument: {name!r}", name)
        check, expected = specs[name]
        if value is not None and not check(value):
            raise bad_request(f"{name!r} must be {expected}, got {value!r:.100}", name)


def _common(body: dict, chat: bool) -> GenerationRequest:
    sampling = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    if chat and body.get("max_completion_tokens") is not None:
        sampling["max_tokens"] = body["max_completion_tokens"]
    if body.get("stop") is not None:
        sampling["stop"] = [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
    if sampling.get("min_tokens", 0) > sampling.get("max_tokens", math.inf):
        raise bad_request("'min_tokens' must not exceed 'max_tokens'", "min_tokens")
    options = body.get("stream_options") or {}
    if options and not body.get("stream"):
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return GenerationRequest(prompts=[], sampling=sampling, n=body.get("n") or 1, stream=bool(body.get("stream")),
                             include_usage=bool(options.get("include_usage")), priority=body.get("priority"),
                             model=body.get("model"), chat=chat)


def parse_completion(body) -> GenerationRequest:
    """Validate a /v1/completions body. `prompt` is a string, a list of strings, token ids, or lists of ids."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check_fields(body, {**_SAMPLING, **_COMMON, **_COMPLETION_ONLY})
    if "prompt" not in body:
        raise bad_request("'prompt' is required", "prompt")
    prompts = _parse_prompt(body["prompt"])
    req = _common(body, chat=False)
    req.prompts = prompts
    req.echo = bool(body.get("echo"))
    req.logprobs = body.get("logprobs")
    if len(prompts) * req.n > MAX_PROMPTS * 4:
        raise bad_request(f"too many completions: {len(prompts)} prompts x n={req.n}", "n")
    return req


def _parse_prompt(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt) or all(
                isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            if len(prompt) > MAX_PROMPTS:
                raise bad_request(f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}", "prompt")
            return list(prompt)
    raise bad_request("'prompt' must be a string, a non-empty list of strings, a list of token ids, "
                      "or a list of non-empty lists of token ids", "prompt")


def parse_chat(body) -> GenerationRequest:
    """Validate a /v1/chat/completions body; `messages` is a list of {role, content} objects."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _check_fields(body, {**_SAMPLING, **_COMMON, **_CHAT_ONLY})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and set(m) <= {"role", "content", "name"}):
            raise bad_request("each message must be {\"role\": \"system\"|\"user\"|\"assistant\", "
                              "\"content\": string}", "messages")
    req = _common(body, chat=True)
    req.prompts = [messages]
    if body.get("logprobs"):
        req.logprobs = body.get("top_logprobs") or 0
    req.chat_template_kwargs = body.get("chat_template_kwargs") or {}
    return req
