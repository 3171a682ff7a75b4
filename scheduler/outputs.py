"""What the engine hands back: per-request deltas of text, tokens and logprobs, and its load figures."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class CompletionOutput:
    """One sample of a request. Emitted as a delta: the text and tokens new since the last output."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None      # "stop", "length", "abort", or "error" (see RequestOutput.error)
    # Per new token: (logprob of the sampled token, [(token_id, logprob), ...] top alternatives).
    logprobs: list | None = None
    num_preemptions: int = 0


@dataclasses.dataclass(slots=True)
class RequestOutput:
    """New progress of one request; `finished` is True exactly once, on its last output.

    `error` is set when the request failed on its own data (every sample then finishes with
    finish_reason "error"); the other requests in its steps are unaffected.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    task: str = "general"
    arrival_time: float = 0.0
    first_token_time: float | None = None
    error: str | None = None


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


@dataclasses.dataclass(slots=True, frozen=True)
class EngineStats:
    """A snapshot of an engine's load, for metrics and health checks."""

    running: int                       # sequences holding KV blocks
    waiting: int                       # sequences queued, new or preempted
    waiting_by_task: dict[str, int]
    kv_blocks_total: int
    kv_blocks_free: int
    num_preemptions: int               # since start
    prefix_query_tokens: int           # prompt tokens looked up in the prefix cache, since start
    prefix_hit_tokens: int             # of those, found cached
    draft_tokens: int = 0              # speculative drafts checked by the model, since start
    accepted_draft_tokens: int = 0     # of those, kept
