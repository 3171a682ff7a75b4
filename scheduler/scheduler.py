"""The iteration-level scheduler: every step it decides which sequences run and how many tokens each computes."""

from __future__ import annotations

import dataclasses
import time

from kv_cache.block_manager import BlockManager
from models.stop_rule import StopRule
from scheduler.ngram_proposer import NgramProposer
from scheduler.queues import TaskQueues
from scheduler.sequence import PLACEHOLDER_TOKEN, SeqStatus, Sequence


@dataclasses.dataclass(slots=True, kw_only=True)
class SchedulerConfig:
    """The scheduling limits; EngineConfig inherits them, defaults included."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096   # token budget of one step, prefill and decode together
    max_model_len: int                   # tokens a sequence may hold, prompt and output together
    block_size: int = 16
    enable_prefix_caching: bool = True
    aging_seconds: float = 30.0          # waiting this long gains a sequence one priority class
    speculative_ngram: int = 0           # greedy decodes draft up to this many tokens a step by n-gram lookup; 0: off

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:  # None: EngineConfig's "the model's own limit"
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.speculative_ngram < 0:
            raise ValueError(f"speculative_ngram must be >= 0, got {self.speculative_ngram}")


@dataclasses.dataclass(slots=True)
class ScheduledBatch:
    """One step's work: sequence i computes num_new_tokens[i] tokens from its num_computed_tokens on."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    preempted: list[Sequence]


@dataclasses.dataclass(slots=True)
class SchedulerStats:
    num_preemptions: int = 0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    draft_tokens: int = 0            # drafts checked by the model (speculative decoding)
    accepted_draft_tokens: int = 0   # of those, equal to the model's own token there


class Scheduler:
    """Admits and evicts sequences every step under one token budget and a KV block pool.

    Running sequences go first (best priority, earliest arrival first), each taking all of its
    uncomputed tokens that fit the budget: one for a decode, a chunk for a prefill. When the pool
    runs dry the worst running sequence (lowest priority, latest arrival) is preempted: its blocks
    are freed and it waits to be recomputed. Waiting sequences are admitted from the task queues
    with what budget is left, reusing cached prefix blocks, unless this step had to preempt.

    With speculative_ngram > 0, a greedy decode first appends the tokens an NgramProposer guesses
    will follow (drafts): the step computes them with its last token and samples after each, and
    `accept_drafts` keeps the drafts the model agrees with. Drafts are what a step gives up first:
    when the pool runs dry they are dropped before anything is preempted.
    """

    def __init__(self, config: SchedulerConfig, num_blocks: int, stop_rule: StopRule = StopRule(),
                 clock=time.monotonic):
        self.config = config
        self.stop_rule = stop_rule
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting = TaskQueues(config.aging_seconds)
        self.running: list[Sequence] = []
        self.clock = clock
        self.stats = SchedulerStats()
        self.proposer = NgramProposer() if config.speculative_ngram else None
        # n > 1: the later samples wait until the first has computed the shared prompt, then reuse its blocks.
        self._deferred: dict[int, list[Sequence]] = {}

    def add(self, seqs: list[Sequence]) -> None:
        """Queue the samples of one request; the first computes the prompt for the others."""
        self.waiting.push(seqs[0])
        if len(seqs) > 1:
            self._deferred[seqs[0].seq_id] = list(seqs[1:])

    @staticmethod
    def _rank(seq: Sequence):
        return seq.priority, seq.arrival_time, seq.seq_id

    def schedule(self) -> ScheduledBatch:
        """Pick this step's sequences and how many tokens each computes, allocating their blocks."""
        cfg, bm = self.config, self.block_manager
        budget = cfg.max_num_batched_tokens
        batch = ScheduledBatch([], [], [])
        running = sorted(self.running, key=self._rank)
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            if self._ends_on_pending_token(seq):  # nothing left to compute: it finishes once its token lands
                i += 1
                continue
            if self.proposer is not None:
                self._draft(seq, budget)
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not bm.allocate(seq, seq.num_computed_tokens + n):
                if seq.num_draft_tokens:
                    self._drop_drafts(seq)
                    n = min(seq.num_tokens - seq.num_computed_tokens, budget)
                    continue
                victim = running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
                continue
            break
        if not batch.preempted:
            now = self.clock()
            while budget > 0 and len(running) < cfg.max_num_seqs:
                seq = self.waiting.peek(now)
                if seq is None:
                    break
                cached = bm.match_prefix(seq)
                num_cached = len(cached) * cfg.block_size
                n = min(seq.num_tokens - num_cached, budget)
                if not bm.allocate(seq, num_cached + n, cached):
                    break
                self.waiting.remove(seq)
                self.stats.prefix_query_tokens += seq.num_tokens
                self.stats.prefix_hit_tokens += num_cached
                seq.num_computed_tokens = num_cached
                seq.status = SeqStatus.RUNNING
                running.append(seq)
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
        self.running = running
        # Backends want decodes (one query token) first; the longest decodes lead, so the decode
        # kernel's longest programs start first and the short ones fill in behind them (a step ends
        # with its last program: longest-first keeps a long context from starting last).
        order = sorted(range(len(batch.seqs)),
                       key=lambda j: (False, -batch.seqs[j].num_tokens) if batch.num_new_tokens[j] == 1 else (True, 0))
        batch.seqs = [batch.seqs[j] for j in order]
        batch.num_new_tokens = [batch.num_new_tokens[j] for j in order]
        return batch

    def _draft(self, seq: Sequence, budget: int) -> None:
        """Append draft tokens to a greedy decode: as many as the proposer finds, up to
        speculative_ngram, the step's budget, the context limit and the tokens the request may still
        take. Drafts left from a step that did not complete are kept (the step is redone)."""
        if seq.num_draft_tokens:  # left by a step that raised before it ran: redo it if it fits
            if seq.num_tokens - seq.num_computed_tokens > budget:
                self._drop_drafts(seq)
            return
        p = seq.params
        if (not p.greedy or seq.num_tokens - seq.num_computed_tokens != 1
                or seq.num_output_tokens < p.min_tokens):  # the first min_tokens outputs are sampled with bans
            return
        limit = min(self.config.speculative_ngram, budget - 1, self.config.max_model_len - seq.num_tokens)
        if p.max_tokens is not None:
            limit = min(limit, p.max_tokens - seq.num_output_tokens - 1)
        drafts = self.proposer.propose(seq, limit)
        seq.token_ids.extend(drafts)
        seq.num_draft_tokens = len(drafts)

    def _drop_drafts(self, seq: Sequence) -> None:
        if seq.num_draft_tokens:
            del seq.token_ids[-seq.num_draft_tokens:]
            seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens - 1)
            seq.num_draft_tokens = 0

    def accept_drafts(self, seq: Sequence, targets: list[int]) -> list[int]:
        """Settle a step that checked `seq`'s drafts: `targets` are the model's tokens after its last
        real token and after each draft. Drafts equal to the model's token there are kept, up to the
        first that is not; the returned tokens (those kept, then the model's token after them) are
        the step's output, for `record_token` one at a time. The kept drafts' K/V stay computed, the
        others' slots are free to be overwritten, and blocks no longer needed go back to the pool."""
        d = seq.num_draft_tokens
        drafts = seq.token_ids[-d:]
        kept = 0
        while kept < d and drafts[kept] == targets[kept]:
            kept += 1
        self._drop_drafts(seq)
        self.stats.draft_tokens += d
        self.stats.accepted_draft_tokens += kept
        seq.num_computed_tokens = seq.num_tokens + kept
        self.block_manager.trim(seq, seq.num_tokens + kept + 1)
        return targets[:kept + 1]  # published by the next `advance`, once they are in token_ids

    def _preempt(self, seq: Sequence) -> None:
        self._drop_drafts(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.push(seq)

    def advance(self, batch: ScheduledBatch) -> list[Sequence]:
        """Record a launched step before its tokens are known: computed tokens, cached blocks, and a
        placeholder for each token being sampled (a sequence with drafts gets none: `accept_drafts`
        settles it). Returns the sequences that sample, in batch order.
        """
        sampling = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if seq.is_finished:  # cancelled, or ended by the previous step's token, while this one ran
                continue
            seq.num_computed_tokens += n
            if seq.num_draft_tokens:  # drafts are not published: only the blocks before them
                self.block_manager.cache_computed_blocks(seq, seq.num_tokens - seq.num_draft_tokens)
                sampling.append(seq)
                continue
            self.block_manager.cache_computed_blocks(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(PLACEHOLDER_TOKEN)
                sampling.append(seq)
                self._release_deferred(seq)
        return sampling

    def record_token(self, seq: Sequence, token: int) -> bool:
        """Put the sampled token in place of the sequence's placeholder; True if it ends the sequence."""
        assert seq.token_ids[-1] == PLACEHOLDER_TOKEN, "a token arrived for a sequence that was not sampling"
        seq.token_ids[-1] = token
        if self.stop_rule.stops(seq.params, seq.num_output_tokens - 1, token):
            reason = "stop"
        elif self._at_length_limit(seq):
            reason = "length"
        else:
            return False
        self.finish(seq, reason)
        return True

    def _at_length_limit(self, seq: Sequence) -> bool:
        max_tokens = seq.params.max_tokens
        return ((max_tokens is not None and seq.num_output_tokens >= max_tokens)
                or seq.num_tokens >= self.config.max_model_len)

    def _ends_on_pending_token(self, seq: Sequence) -> bool:
        # Only with overlapped steps: the last token is still a placeholder and it reaches a length limit.
        return seq.token_ids[-1] == PLACEHOLDER_TOKEN and self._at_length_limit(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of the queues or the batch for good and free its blocks at once."""
        if seq.is_finished:
            return
        self._drop_drafts(seq)
        if self.proposer is not None:
            self.proposer.forget(seq.seq_id)
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            self.block_manager.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        if seq.token_ids[-1] == PLACEHOLDER_TOKEN:  # cancelled before its last token arrived
            seq.token_ids.pop()
        self._release_deferred(seq)

    def _release_deferred(self, leader: Sequence) -> None:
        # Once the leader has computed the prompt (or ended without it), its siblings may run.
        for sibling in self._deferred.pop(leader.seq_id, ()):
            if not sibling.is_finished:
                self.waiting.push(sibling)
