"""When a token ends its sequence: stop token ids and EOS, never before min_tokens output tokens."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the sampler asks this rule, so it cannot be imported from here at run time
    from models.sampler import SamplingParams


@dataclasses.dataclass(frozen=True, slots=True)
class StopRule:
    """The one definition of stopping on a token, asked by the sampler (which must not draw a
    stopping token too early) and by the scheduler (which ends a sequence on one).

    The i-th output token (from 0) stops its sequence when i >= min_tokens and it is one of the
    request's stop_token_ids, or an EOS token unless ignore_eos. Below min_tokens those ids are
    banned from sampling, so the first min_tokens tokens never end the output.
    """

    eos_token_ids: tuple[int, ...] = ()  # the model's and its tokenizer's

    def stop_ids(self, params: SamplingParams) -> tuple[int, ...]:
        """Every id that ends a sequence of this request (once min_tokens are out)."""
        return tuple(params.stop_token_ids) + (() if params.ignore_eos else self.eos_token_ids)

    def banned_ids(self, params: SamplingParams, index: int) -> tuple[int, ...]:
        """Ids the `index`-th output token may not be."""
        return self.stop_ids(params) if index < params.min_tokens else ()

    def stops(self, params: SamplingParams, index: int, token: int) -> bool:
        """Whether `token`, the `index`-th output token, ends its sequence."""
        # Asked for every sampled token: test membership without building stop_ids' tuple.
        return index >= params.min_tokens and (token in params.stop_token_ids
                                               or (not params.ignore_eos and token in self.eos_token_ids))
