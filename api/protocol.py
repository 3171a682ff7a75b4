"""The OpenAI request bodies as declared models: decoding, validation, and one normalised form.

Every bound is checked here, before a request reaches a tokenizer or an engine: numbers finite and
in range, strings valid Unicode, lists bounded, nesting shallow. What depends on the model (the
vocabulary, the context length) is checked when the request is planned (`api.planning`) and again by
the engine.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, ValidationError, model_validator)

from api.errors import bad_request

MAX_NESTING = 32          # JSON depth; a chat request needs 4, a prompt list 3
MAX_PROMPTS = 1024        # a structural bound; the server's per-request completion cap is lower
MAX_PROMPT_TOKEN_IDS = 1 << 20
MAX_N = 64
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGPROBS = 20         # as vLLM (OpenAI's completions allow 5)
MAX_PRIORITY = 100
MAX_TEMPLATE_CHARS = 64 << 10
MAX_INT_DIGITS = 20       # 2**64 has 20 digits: every id, seed and count fits
# Arguments of `apply_chat_template` itself: a client must not set them through the template kwargs.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
    "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"})
# OpenAI fields this server does not implement: refused by name unless they hold a neutral value.
UNSUPPORTED = {
    "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "best_of": 1, "suffix": None,
    "tools": [], "tool_choice": "none", "functions": [], "function_call": "none", "parallel_tool_calls": None,
    "response_format": {"type": "text"}, "audio": None, "modalities": ["text"], "prediction": None,
    "reasoning_effort": None, "web_search_options": None,
}


# ---- decoding the body -------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: linear and fast
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(body: bytes) -> int:
    """How deeply a JSON text nests arrays and objects, found without parsing it (C-speed scans)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def decode_json(body: bytes) -> Any:
    """The request body as JSON; a 400 naming the problem if it is not UTF-8, not JSON, nested deeper
    than MAX_NESTING, or holds a number that is not finite or has more than MAX_INT_DIGITS digits."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    depth = nesting_depth(body)
    if depth > MAX_NESTING:
        raise bad_request(f"the request body nests {depth} levels deep; at most {MAX_NESTING} are allowed")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise bad_request(f"the request body is not valid JSON: {e}") from e


# ---- field types -------------------------------------------------------------------------------

def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"invalid Unicode: {e.reason} at character {e.start}") from None
    return value


def _number(value):
    # Integers are welcome where a float is expected (temperature 1); booleans and strings are not.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, AfterValidator(_unicode)]
Number = Annotated[StrictFloat, BeforeValidator(_number)]
TokenId = Annotated[StrictInt, Field(ge=0)]


def _prompt(value) -> list:
    """A completion prompt as a list of prompts, each a string or a list of token ids."""
    if isinstance(value, str):
        return [_unicode(value)]
    if isinstance(value, list) and value:
        if all(type(t) is int and t >= 0 for t in value):
            if len(value) > MAX_PROMPT_TOKEN_IDS:
                raise ValueError(f"at most {MAX_PROMPT_TOKEN_IDS} token ids per prompt")
            return [value]
        if len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(value)}")
        if all(isinstance(p, str) for p in value):
            return [_unicode(p) for p in value]
        if all(isinstance(p, list) and 0 < len(p) <= MAX_PROMPT_TOKEN_IDS and all(type(t) is int and t >= 0
                                                                                 for t in p) for p in value):
            return list(value)
    raise ValueError("must be a string, a non-empty list of strings, a list of token ids, "
                     "or a list of non-empty lists of token ids")


def _stop(value):
    stops = [value] if isinstance(value, str) else value
    if isinstance(stops, list) and any(s == "" for s in stops):
        raise ValueError("stop strings must not be empty")
    return stops


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_PROMPTS)]
    name: Annotated[Text, Field(max_length=256)] | None = None

    def as_template_message(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": content}


class _Request(_Strict):
    """Fields shared by completion and chat requests (sampling, streaming, routing)."""

    model: Annotated[Text, Field(max_length=256)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    min_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=-1)] | None = None      # the vocabulary bounds it (planning)
    min_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: Annotated[list[Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                    Field(max_length=MAX_STOP), BeforeValidator(_stop)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    ignore_eos: StrictBool | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # Added to the task's priority class: a client may defer its own requests, never jump the queue.
    priority: Annotated[StrictInt, Field(ge=0, le=MAX_PRIORITY)] = 0
    user: Annotated[Text, Field(max_length=256)] | None = None     # accepted, as OpenAI clients send it

    @model_validator(mode="after")
    def _consistent(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        limit = self.max_tokens
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise ValueError(f"'min_tokens' ({self.min_tokens}) must not exceed 'max_tokens' ({limit})")
        return self

    def sampling(self) -> dict:
        """The sampling fields the client set (SamplingParams keyword arguments)."""
        names = ("max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                 "stop_token_ids", "ignore_eos")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class CompletionRequest(_Request):
    prompt: Annotated[list, BeforeValidator(_prompt)]
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class ChatRequest(_Request):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None   # OpenAI's newer name
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    chat_template: Annotated[Text, Field(max_length=MAX_TEMPLATE_CHARS)] | None = None
    chat_template_kwargs: dict[Annotated[Text, Field(max_length=64)],
                               StrictBool | StrictInt | Number | Annotated[Text, Field(max_length=1024)] | None
                               ] | None = None

    @model_validator(mode="after")
    def _template_kwargs(self):
        reserved = sorted(set(self.chat_template_kwargs or {}) & RESERVED_TEMPLATE_KWARGS)
        if reserved:
            raise ValueError(f"'chat_template_kwargs' may not set {reserved}: they are the server's to choose")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("'max_tokens' and 'max_completion_tokens' disagree")
            self.max_tokens = self.max_completion_tokens
        return self


# ---- the normalised request ----------------------------------------------------------------------

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
    priority: int = 0               # the client's deferral, added to the task's class
    model: str | None = None
    chat: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict = dataclasses.field(default_factory=dict)


def _validate(model: type[_Request], body) -> _Request:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, neutral in UNSUPPORTED.items():
        if body.get(name) is not None and body[name] != neutral:
            raise bad_request(f"'{name}' is not supported by this server", name)
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in UNSUPPORTED})
    except ValidationError as e:
        raise _as_bad_request(e) from None


def _as_bad_request(error: ValidationError):
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    param = loc[0] if loc else None
    if first["type"] == "extra_forbidden":
        return bad_request(f"unrecognized request argument: {param!r}", param)
    if first["type"] == "missing":
        return bad_request(f"{param!r} is required", param)
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a model-level rule: its message names the field it is about first
        named = re.search(r"'(\w+)'", message)
        return bad_request(message, named.group(1) if named else None)
    where = ".".join(loc[:1] + [p for p in loc[1:] if not p.startswith(("function-", "constrained-"))][:2])
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {json.dumps(got)[:60]})"
    return bad_request(f"{where!r}: {message}{shown}", param)


def _common(req: _Request, chat: bool, prompts: list) -> GenerationRequest:
    return GenerationRequest(prompts=prompts, sampling=req.sampling(), n=req.n, stream=req.stream,
                             include_usage=bool(req.stream_options and req.stream_options.include_usage),
                             priority=req.priority, model=req.model, chat=chat)


def parse_completion(body) -> GenerationRequest:
    """Validate a /v1/completions body. `prompt` is a string, a list of strings, token ids, or lists of ids."""
    req = _validate(CompletionRequest, body)
    out = _common(req, False, req.prompt)
    out.echo, out.logprobs = req.echo, req.logprobs
    return out


def parse_chat(body) -> GenerationRequest:
    """Validate a /v1/chat/completions body; `messages` is a list of {role, content} objects."""
    req = _validate(ChatRequest, body)
    out = _common(req, True, [[m.as_template_message() for m in req.messages]])
    out.logprobs = (req.top_logprobs or 0) if req.logprobs else None
    out.chat_template = req.chat_template
    out.chat_template_kwargs = dict(req.chat_template_kwargs or {})
    return out
