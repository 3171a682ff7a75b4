"""Sampling parameters and the batched sampler: greedy, temperature, top-k, top-p, min-p, seeds, logprobs."""

from __future__ import annotations

import dataclasses
import math

import torch

from models.errors import SequenceError
from models.host_copy import to_device
from models.stop_rule import StopRule


@dataclasses.dataclass(slots=True)
class SamplingParams:
    """How to decode one request. temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

    n: int = 1
    max_tokens: int | None = 16      # None: up to the model's context limit
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    stop_token_ids: list[int] = dataclasses.field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None      # None: no logprobs; k: the sampled token's plus the top k
    skip_special_tokens: bool = True
    allowed_token_ids: list[int] | None = None  # constrain every sampled token to this set

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for name in ("temperature", "top_p", "min_p"):
            setattr(self, name, _finite_float(name, getattr(self, name)))
        checks = [
            (_is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
             f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (_is_int(self.min_tokens) and self.min_tokens >= 0,
             f"min_tokens must be an integer >= 0, got {self.min_tokens!r}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (_is_int(self.top_k) and self.top_k >= -1,
             f"top_k must be -1, 0 or a positive integer, got {self.top_k!r}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.seed is None or _is_int(self.seed), f"seed must be an integer, got {self.seed!r}"),
            (self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= 20),
             f"logprobs must be an integer in [0, 20], got {self.logprobs!r}"),
            (isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
             "stop must be non-empty strings"),
            (_token_ids(self.stop_token_ids), "stop_token_ids must be a list of token ids"),
            (self.allowed_token_ids is None or (_token_ids(self.allowed_token_ids) and len(self.allowed_token_ids) > 0),
             "allowed_token_ids must be a non-empty list of token ids"),
            (isinstance(self.ignore_eos, bool) and isinstance(self.skip_special_tokens, bool),
             "ignore_eos and skip_special_tokens must be booleans"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.top_k == -1:
            self.top_k = 0

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ValueError unless every token id named here lies inside a vocabulary of `vocab_size`
        ids and top_k does not exceed it: an id past the logits would fail the sampler's whole batch."""
        for name, ids in (("stop_token_ids", self.stop_token_ids), ("allowed_token_ids", self.allowed_token_ids)):
            bad = next((t for t in ids or () if t >= vocab_size), None)
            if bad is not None:
                raise ValueError(f"{name} must be below the vocabulary size {vocab_size}, got {bad}")
        if self.top_k > vocab_size:
            raise ValueError(f"top_k must not exceed the vocabulary size {vocab_size}, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(values) -> bool:
    return isinstance(values, (list, tuple)) and all(_is_int(t) and t >= 0 for t in values)


def _finite_float(name: str, value) -> float:
    # A float the device can take: no NaN or infinity, and no integer too large for a double.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            if math.isfinite(value := float(value)):
                return value
        except OverflowError:
            pass
    raise ValueError(f"{name} must be a finite number")


@dataclasses.dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor                    # [B] int64
    logprobs: torch.Tensor | None = None       # [B] float32, of the sampled tokens
    top_ids: torch.Tensor | None = None        # [B, k] int64
    top_logprobs: torch.Tensor | None = None   # [B, k] float32


_MASK32 = 0xFFFFFFFF
# Rows with 0 < top_k <= this draw among their top_k candidates, selected with torch.topk; other rows
# with a filter sort the whole vocabulary (Qwen3's recommended top_k is 20; its vocabulary is 151,936).
TOP_K_SELECT = 1024
_UNFILTERED = -1  # the group of rows with no top-k, top-p or min-p filter: drawn in place, unsorted


def _mix32(x):
    """A 32-bit integer hash (xorshift-multiply), on Python ints or int64 tensors alike."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def noise_key(seed: int, step: int) -> int:
    """The 32-bit key of a seeded row's noise at one step of its output."""
    return _mix32((_mix32(step & _MASK32) ^ (seed & _MASK32)) + ((seed >> 32) & _MASK32))


def seeded_exponential(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [S, W] at token `ids` [S, W] for rows keyed by `keys` [S, 1] (noise_key): the
    value for a (seed, step, token id) depends on nothing else, not the batch nor the ids asked for."""
    bits = _mix32(_mix32(ids ^ keys) + keys)
    return -torch.log((bits.double() + 0.5) / 2**32)


class Sampler:
    """Turns float32 logits [B, V] into one token per row.

    Sampling is the exponential race: argmax(p / E) with E ~ Exp(1) draws exactly from p, and lets
    seeded rows bring their own noise while the rest share one batched draw.
    """

    def __init__(self, stop_rule: StopRule = StopRule()):
        self.stop_rule = stop_rule

    def __call__(self, logits: torch.Tensor, rows: list) -> SamplerOutput:
        """Sample row i of `logits` as rows[i] (a models.rows.Row) asks. Raises SequenceError for a
        row whose own data fails, so that only its sequence fails."""
        for i, row in enumerate(rows):
            try:
                self._constrain(logits, i, row)
            except Exception as e:
                raise SequenceError(row, e) from e
        out = SamplerOutput(token_ids=logits.argmax(dim=-1))
        want_logprobs = [r.params.logprobs for r in rows if r.params.logprobs is not None]
        if want_logprobs:
            logprobs = torch.log_softmax(logits, dim=-1)
        sampled_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
        if sampled_rows:
            self._race(logits, rows, sampled_rows, out.token_ids)
        if want_logprobs:
            out.logprobs = logprobs.gather(1, out.token_ids[:, None])[:, 0]
            k = max(want_logprobs)
            if k:
                out.top_logprobs, out.top_ids = logprobs.topk(k, dim=-1)
        return out

    def _race(self, logits: torch.Tensor, rows: list, sampled_rows: list[int], token_ids: torch.Tensor) -> None:
        """Draw the sampled rows' tokens into `token_ids`, a group of rows at a time (see _group): rows
        without a filter draw from softmax(logits / T) as they stand, rows with the same top_k (up to
        TOP_K_SELECT) among their top_k candidates, selected without sorting the vocabulary, the others
        among the whole vocabulary, sorted. A row's candidates depend only on its own parameters, never
        on its batch, so a seeded row draws the same token in any batch."""
        device, vocab = logits.device, logits.shape[-1]
        groups: dict[int, list[int]] = {}
        for i in sampled_rows:
            groups.setdefault(_group(rows[i].params), []).append(i)
        for group, members in groups.items():
            sub = [rows[i].params for i in members]
            idx = to_device(members, torch.int64, device)
            floats = to_device([p.temperature for p in sub] + [p.top_p for p in sub] + [p.min_p for p in sub],
                               torch.float32, device).view(3, -1)
            if group == _UNFILTERED:  # nothing to cut, so no order to find: every token in place
                probs = (logits[idx] / floats[0][:, None]).softmax(dim=-1)
                cand_ids = torch.arange(vocab, device=device).expand(len(members), vocab)
            else:
                candidates, cand_ids = _candidates(logits[idx], group)
                probs = _filtered_probs(candidates, floats[0], to_device([p.top_k for p in sub], torch.int64, device),
                                        floats[1], floats[2])
            noise = torch.empty_like(probs).exponential_()
            seeded = [(j, rows[i]) for j, i in enumerate(members) if rows[i].seed is not None]
            if seeded:  # their own noise at their candidates' ids
                keys = to_device([noise_key(r.seed, r.num_output_tokens) for _, r in seeded], torch.int64, device)
                if group > 0:  # top_k ids a row: every seeded row of the group at once
                    at = to_device([j for j, _ in seeded], torch.int64, device)
                    noise[at] = seeded_exponential(keys[:, None], cand_ids[at]).to(noise.dtype)
                else:  # the whole vocabulary: a row at a time keeps the hash's intermediates small
                    for n, (j, _) in enumerate(seeded):
                        noise[j] = seeded_exponential(keys[n:n + 1, None], cand_ids[j:j + 1])[0].to(noise.dtype)
            token_ids[idx] = cand_ids.gather(1, (probs / noise).argmax(dim=-1, keepdim=True))[:, 0]

    def _constrain(self, logits: torch.Tensor, i: int, row) -> None:
        """Mask, in place, what row i may not draw: tokens outside allowed_token_ids, and the
        stopping ids while below min_tokens. Index lists go through pinned memory: no host sync.
        Most rows have neither, and then no tensor is touched (this runs for every row, every step)."""
        device = logits.device
        allowed = row.params.allowed_token_ids
        if allowed is not None:
            keep = torch.full_like(logits[i], float("-inf"))
            keep[to_device(allowed, torch.int64, device)] = 0.0
            logits[i] += keep
        banned = self.stop_rule.banned_ids(row.params, row.num_output_tokens)
        if banned:
            logits[i, to_device(banned, torch.int64, device)] = float("-inf")


def _group(params: SamplingParams) -> int:
    """Which way a sampled row draws: _UNFILTERED, its top_k (selected), or 0 (the vocabulary sorted)."""
    if params.top_k == 0 and params.top_p >= 1.0 and params.min_p == 0.0:
        return _UNFILTERED
    return params.top_k if 0 < params.top_k <= TOP_K_SELECT else 0


def _candidates(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidate logits in descending order and their token ids: the top_k largest
    (torch.topk: a selection, much cheaper than sorting a 150k vocabulary), or all of them for 0 or a
    top_k as large as the vocabulary."""
    if 0 < top_k < logits.shape[-1]:
        return logits.topk(top_k, dim=-1)
    return logits.sort(dim=-1, descending=True)


def _filtered_probs(candidates, temperature, top_k, top_p, min_p) -> torch.Tensor:
    """Probabilities over each row's candidates (logits in descending order) after temperature, then
    top-k, then top-p (on the renormalised top-k set), then min-p; the dropped ones get 0.

    top-p keeps the smallest prefix of the sorted distribution whose mass reaches p: a token stays
    if the mass strictly before it is below p. The most likely token always stays.
    """
    candidates = candidates / temperature[:, None]
    width = candidates.shape[-1]
    rank = torch.arange(width, device=candidates.device)[None, :]
    k = torch.where(top_k > 0, top_k, width)
    candidates = candidates.masked_fill(rank >= k[:, None], float("-inf"))
    probs = candidates.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (mass_before >= top_p[:, None]) | (probs < min_p[:, None] * probs[:, :1])
    drop[:, 0] = False
    return candidates.masked_fill(drop, float("-inf")).softmax(dim=-1)
