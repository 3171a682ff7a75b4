"""What the runner and sampler read of a scheduled sequence, and a plain row for runs outside the scheduler."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from models.sampler import SamplingParams


class Row(Protocol):
    """A sequence as the model side sees it (scheduler.sequence.Sequence is one). Only read here:
    the runner never changes scheduling state."""

    token_ids: list[int]
    num_computed_tokens: int     # tokens whose K/V are in the cache already
    block_table: list[int]       # the cache blocks holding its K/V, in order
    params: SamplingParams
    seed: int | None             # the sequence's own seed (n > 1 samples get distinct ones)
    num_draft_tokens: int        # the last tokens are drafts: sample after each of them too

    @property
    def num_tokens(self) -> int: ...

    @property
    def num_output_tokens(self) -> int: ...  # tokens generated so far: keys seeded noise and min_tokens


@dataclasses.dataclass(slots=True)
class PlainRow:
    """A Row with no scheduler behind it: warm-up, memory profiling, benchmarks and tests."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    block_table: list[int] = dataclasses.field(default_factory=list)
    num_computed_tokens: int = 0
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    seed: int | None = None
    num_output_tokens: int = 0
    num_draft_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)
