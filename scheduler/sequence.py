"""A sequence: one sample of one request, with its tokens, progress and KV blocks."""

from __future__ import annotations

import dataclasses
import enum

from models.sampler import SamplingParams

# Stands for a sampled token still on its way from the GPU: with overlapped steps the next step is
# scheduled (and its input read on the device) before the host knows the token.
PLACEHOLDER_TOKEN = -1


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclasses.dataclass(slots=True, eq=False)
class Sequence:
    """There is no prefill or decode phase: a sequence has tokens, and a count of those whose K/V
    are computed. Each step computes some of the rest; when none are left it samples one more.
    The runner reads it as a models.rows.Row.
    """

    seq_id: int
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    arrival_time: float
    task: str
    priority: int                # lower runs first
    sample_index: int = 0        # which of the request's n samples
    seed: int | None = None
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = dataclasses.field(default_factory=list)
    block_hashes: list[int] = dataclasses.field(default_factory=list)
    num_cached_blocks: int = 0
    num_preemptions: int = 0
    # The last num_draft_tokens of token_ids are guesses (speculative decoding) that the step in
    # progress checks; they are taken out, or kept as outputs, when its tokens arrive.
    num_draft_tokens: int = 0
    finish_reason: str | None = None
    # Per output token, when logprobs were asked for: (logprob, [(token_id, logprob), ...]).
    output_logprobs: list = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
