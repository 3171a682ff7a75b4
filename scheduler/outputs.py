"""What the engine hands back: per-request deltas of text, tokens and logprobs."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class CompletionOutput:
    """One sample of a request. Emitted as a delta: the text and tokens new since the last output."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    # Per new token: (logprob of the sampled token, [(token_id, logprob), ...] top alternatives).
    logprobs: list | None = None
    num_preemptions: int = 0


@dataclasses.dataclass(slots=True)
class RequestOutput:
    """New progress of one request; `finished` is True exactly once, on its last output."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    task: str = "general"
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None
    num_cached_tokens: int = 0


def merge_outputs(deltas: list[RequestOutput]) -> RequestOutput:
    """Fold a request's stream of deltas into its complete result."""
    last = deltas[-1]
    choices: dict[int, CompletionOutput] = {}
    for delta in deltas:
        for c in delta.outputs:
            acc = choices.setdefault(c.index, CompletionOutput(c.index, "", [], logprobs=None))
            acc.text += c.text
            acc.token_ids.extend(c.token_ids)
            if c.logprobs is not None:
                acc.logprobs = (acc.logprobs or []) + c.logprobs
            acc.finish_reason = c.finish_reason or acc.finish_reason
            acc.num_preemptions = c.num_preemptions
    return dataclasses.replace(last, outputs=[choices[i] for i in sorted(choices)])
