"""Scheduler invariants under random traffic, with a simulated model that reads its KV through the
block tables, so a wrong block (stale, shared while written, evicted under a sequence) changes the
output. Acceptance: no block double-owned, no leak, budget and limits kept, every request finishes
exactly once with the output the model dictated, preemption preserves output, priority with aging.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from models.sampler import SamplingParams
from models.stop_rule import StopRule
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.sequence import PLACEHOLDER_TOKEN, SeqStatus, Sequence

EOS = 0
VOCAB = 6  # small, so EOS (1 in 6) ends many samples early
EPS = 1e-9
STOP_RULE = StopRule(eos_token_ids=(EOS,))


# ----------------------------------------------------------------------------- simulated model

def _mix(prev: int, token: int) -> int:
    """The 'K/V' of a position: a function of the K/V before it and its own token."""
    return hash((prev, token, 0x5EED))


def _sample(kv: int, sample_index: int, salt: int) -> int:
    return hash((kv, sample_index, salt)) % VOCAB


def reference_output(prompt, params: SamplingParams, sample_index: int, salt: int, max_model_len: int):
    """What one sequence must produce, computed alone, without any cache: (output tokens, reason)."""
    kv = None
    for t in prompt:
        kv = _mix(kv, t)
    out = []
    while True:
        tok = _sample(kv, sample_index, salt)
        # The simulated model draws stop tokens below min_tokens too (the real sampler bans them): they must not stop.
        if len(out) >= params.min_tokens and (tok in params.stop_token_ids or (not params.ignore_eos and tok == EOS)):
            return out + [tok], "stop"
        out.append(tok)
        if len(out) >= params.max_tokens or len(prompt) + len(out) >= max_model_len:
            return out, "length"
        kv = _mix(kv, tok)


class FakeModel:
    """Runs a batch the way the real forward does: each new position's K/V is written into the slot its
    block table names, built from the previous position's K/V *read back through the block table*."""

    def __init__(self, scheduler: Scheduler, salt: int):
        self.pool = scheduler.block_manager.pool
        self.bs = scheduler.config.block_size
        self.salt = salt
        self.kv = collections.defaultdict(lambda: [None] * self.bs)

    def _slot(self, seq: Sequence, pos: int):
        return seq.block_table[pos // self.bs], pos % self.bs

    def run(self, batch, pending: dict[int, int] | None = None) -> dict[int, int | list[int]]:
        """Sampled token per sampling seq_id; for a sequence with d drafts, the d + 1 tokens sampled
        after its last d + 1 positions. `pending`: the step in flight's tokens, which stand in for the
        placeholders they will replace (the GPU reads them on the device)."""
        sampled = {}
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            prev = None
            if start:
                b, s = self._slot(seq, start - 1)
                prev = self.kv[b][s]
                assert prev is not None, f"seq {seq.seq_id} reads an unwritten KV slot at {start - 1}"
            kvs = []
            for pos in range(start, start + n):
                b, s = self._slot(seq, pos)
                block = self.pool.blocks[b]
                # Writes only ever go to a block this sequence owns alone and that is not published.
                assert block.ref_count == 1 and block.block_hash is None, (
                    f"seq {seq.seq_id} writes position {pos} into shared/cached block {b}")
                token = seq.token_ids[pos]
                if token == PLACEHOLDER_TOKEN:
                    token = pending[seq.seq_id]
                prev = _mix(prev, token)
                self.kv[b][s] = prev
                kvs.append(prev)
            if samples(seq, n):
                targets = [_sample(kv, seq.sample_index, self.salt) for kv in kvs[-1 - seq.num_draft_tokens:]]
                sampled[seq.seq_id] = targets if seq.num_draft_tokens else targets[0]
        return sampled


def samples(seq: Sequence, n: int) -> bool:
    """Whether computing n more tokens reaches the sequence's last token, so that it samples (the runner's rule)."""
    return seq.num_computed_tokens + n == seq.num_tokens


def record_step(sched: Scheduler, batch, sampled: dict[int, int | list[int]]) -> list[Sequence]:
    """Record a step as the synchronous engine does: `advance`, then each sampled token (by seq_id);
    a sequence with drafts settles them and records the tokens kept, until one finishes it.
    Returns the sequences that a token finished (EOS, stop token, length)."""
    finished = []
    for seq in sched.advance(batch):
        tokens = sched.accept_drafts(seq, sampled[seq.seq_id]) if seq.num_draft_tokens else [sampled[seq.seq_id]]
        for token in tokens:
            if seq.token_ids[-1] != PLACEHOLDER_TOKEN:  # advance left one for a sequence without drafts
                seq.token_ids.append(PLACEHOLDER_TOKEN)
            if sched.record_token(seq, token):
                finished.append(seq)
                break
    return finished


def output_ids(seq: Sequence) -> list[int]:
    return seq.token_ids[seq.num_prompt_tokens:]


def has_work(sched: Scheduler) -> bool:
    return bool(sched.running or len(sched.waiting))


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# ----------------------------------------------------------------------------- the driver

@dataclasses.dataclass
class Req:
    arrival_step: int
    prompt: list[int]
    params: SamplingParams
    priority: int = 0
    task: str = "general"


@dataclasses.dataclass
class Cancel:
    step: int
    req: int
    mode: str   # "all" (as the engine aborts), "leader" or "last" (one sample of an n>1 request)
    point: str  # "before" the step is scheduled, or "mid": after the forward, before its tokens are recorded


@dataclasses.dataclass
class RunResult:
    seqs: list[list[Sequence]]           # per request
    aborted: set[int]                    # seq ids a cancel actually finished
    num_preemptions: int
    prefix_hit_tokens: int
    num_chunked: int                     # scheduled prefill chunks that stopped short of sampling
    steps: int
    drafts: tuple[int, int] = (0, 0)     # draft tokens checked, and kept


def check_state(sched: Scheduler, live: list[Sequence]) -> None:
    """Between steps: pool bookkeeping, ownership, and where each sequence stands."""
    pool, bs = sched.block_manager.pool, sched.config.block_size
    pool.check_invariants()
    refs = collections.Counter()
    for seq in live:
        assert len(set(seq.block_table)) == len(seq.block_table), f"seq {seq.seq_id} holds a block twice"
        refs.update(seq.block_table)
    for block in pool.blocks:
        assert block.ref_count == refs[block.block_id], (
            f"block {block.block_id}: ref_count {block.ref_count}, held by {refs[block.block_id]} tables")
    assert pool.num_free + sum(1 for b in pool.blocks if b.ref_count) == pool.num_blocks
    for seq in live:
        for idx, b in enumerate(seq.block_table):
            block = pool.blocks[b]
            if block.ref_count > 1:
                assert block.block_hash is not None, f"block {b} shared by several sequences but never cached"
            if block.block_hash is not None:
                # A published block is full, computed, and holds exactly this sequence's tokens there.
                assert seq.num_computed_tokens >= (idx + 1) * bs
                assert seq.block_hashes[idx] == block.block_hash
                parent = seq.block_hashes[idx - 1] if idx else None
                assert block.content == (parent, tuple(seq.token_ids[idx * bs:(idx + 1) * bs]))
    running = [s for s in live if s.status is SeqStatus.RUNNING]
    assert sorted(s.seq_id for s in sched.running) == sorted(s.seq_id for s in running)
    assert len(sched.running) <= sched.config.max_num_seqs
    queued = {s.seq_id for s in sched.waiting}
    assert len(queued) == len(sched.waiting)
    for seq in live:
        if seq.status is SeqStatus.RUNNING:
            assert seq.seq_id not in queued
            assert seq.num_computed_tokens < seq.num_tokens  # something is always left to compute
            assert len(seq.block_table) * bs >= seq.num_computed_tokens
            # No block beyond what its tokens need (those of rejected drafts went back to the pool).
            assert len(seq.block_table) <= -(-seq.num_tokens // bs)
            assert seq.num_cached_blocks * bs <= seq.num_computed_tokens
        else:
            assert seq.status is SeqStatus.WAITING
            assert seq.num_computed_tokens == 0 and not seq.block_table and seq.num_cached_blocks == 0
    deferred = {s.seq_id for sibs in sched._deferred.values() for s in sibs if not s.is_finished}
    for seq in live:  # nothing lost: a live sequence is running, queued, or waits for its leader
        assert (seq.status is SeqStatus.RUNNING) + (seq.seq_id in queued) + (seq.seq_id in deferred) == 1, seq


def check_batch(sched: Scheduler, batch, waiting_before: list[Sequence], now: float) -> None:
    cfg = sched.config
    bs = cfg.block_size
    assert sum(batch.num_new_tokens) <= cfg.max_num_batched_tokens
    assert len(sched.running) <= cfg.max_num_seqs
    assert len({s.seq_id for s in batch.seqs}) == len(batch.seqs)
    running_ids = {s.seq_id for s in sched.running}
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        assert seq.status is SeqStatus.RUNNING and seq.seq_id in running_ids
        assert n >= 1
        assert seq.num_computed_tokens + n <= seq.num_tokens, "computes past its known tokens"
        assert len(seq.block_table) * bs >= seq.num_computed_tokens + n, "block table too short"
    # Layout the attention kernels rely on: decodes first, longest context first among them.
    kinds = [n == 1 for n in batch.num_new_tokens]
    assert kinds == sorted(kinds, reverse=True), "a prefill precedes a decode"
    decode_lens = [s.num_tokens for s, n in zip(batch.seqs, batch.num_new_tokens) if n == 1]
    assert decode_lens == sorted(decode_lens, reverse=True), "decodes not longest-first"
    for seq in batch.preempted:
        assert seq.status is SeqStatus.WAITING and not seq.block_table and seq.num_computed_tokens == 0
        assert seq not in batch.seqs
    if batch.preempted and sched.running:  # victims are the worst running: lowest priority, latest arrival
        assert max(map(Scheduler._rank, sched.running)) < min(map(Scheduler._rank, batch.preempted))
    # Priority: whatever was admitted had an effective priority no worse than anything left waiting.
    admitted = [s for s in waiting_before if s.status is SeqStatus.RUNNING]
    passed_over = [s for s in waiting_before if s.status is SeqStatus.WAITING]
    if batch.preempted:
        assert not admitted, "admitted while preempting"

    def eff(s):
        return s.priority - (now - s.arrival_time) / cfg.aging_seconds

    for b in admitted:
        for a in passed_over:
            assert eff(b) <= eff(a) + EPS, (
                f"seq {b.seq_id} (prio {b.priority}, arrived {b.arrival_time}, eff {eff(b)}) admitted over "
                f"seq {a.seq_id} (prio {a.priority}, arrived {a.arrival_time}, eff {eff(a)}) at t={now}")


def drive(cfg: SchedulerConfig, num_blocks: int, reqs: list[Req], cancels: list[Cancel] = (), *,
          salt: int = 0, dt: float = 1.0, max_steps: int = 20_000, overlap: bool = False) -> RunResult:
    """Run the traffic to the end, checking state and batches at every step. With `overlap` the
    steps run as the engine's async scheduling does: step N+1 is scheduled and run before step N's
    tokens are recorded (`advance` now, `record_token` one step later); never with drafts, which the
    engine runs synchronously."""
    overlap = overlap and not cfg.speculative_ngram
    clock = FakeClock()
    sched = Scheduler(cfg, num_blocks, STOP_RULE, clock=clock)
    model = FakeModel(sched, salt)
    transitions = collections.Counter()
    real_finish = sched.finish

    def counting_finish(seq, reason):
        was, old_reason = seq.is_finished, seq.finish_reason
        real_finish(seq, reason)
        if was:
            assert seq.finish_reason == old_reason, "a finished sequence changed its finish reason"
        else:
            transitions[seq.seq_id] += 1

    sched.finish = counting_finish  # record_token() finishes through self.finish too
    ids = itertools.count()
    seqs: list[list[Sequence] | None] = [None] * len(reqs)
    all_seqs: list[Sequence] = []
    aborted: set[int] = set()
    by_step = collections.defaultdict(list)
    for c in cancels:
        by_step[c.step, c.point].append(c)
    returned_finished: set[int] = set()
    num_chunked = 0
    in_flight = None  # overlap: (sequences that sampled, their tokens) of the step not yet recorded

    def apply_cancels(step, point):
        for c in by_step.get((step, point), ()):
            group = seqs[c.req]
            if group is None:
                continue
            targets = {"all": group, "leader": group[:1], "last": group[-1:]}[c.mode]
            for seq in targets:
                if not seq.is_finished:
                    aborted.add(seq.seq_id)
                sched.finish(seq, "abort")
                assert seq.is_finished and not seq.block_table

    step = 0
    while True:
        for r, req in enumerate(reqs):
            if req.arrival_step == step:
                group = [Sequence(seq_id=next(ids), request_id=f"r{r}", token_ids=list(req.prompt),
                                  num_prompt_tokens=len(req.prompt), params=req.params, arrival_time=clock.t,
                                  task=req.task, priority=req.priority, sample_index=i)
                         for i in range(req.params.n)]
                seqs[r] = group
                all_seqs.extend(group)
                sched.add(group)
        apply_cancels(step, "before")
        live = [s for s in all_seqs if not s.is_finished]
        check_state(sched, live)
        if not has_work(sched) and in_flight is None and all(r.arrival_step <= step for r in reqs):
            break
        assert step < max_steps, "no progress: livelock"
        waiting_before = list(sched.waiting)  # queued; not the samples deferred behind their leader
        batch = sched.schedule()
        check_batch(sched, batch, waiting_before, clock.t)
        num_chunked += sum(not samples(seq, n) for seq, n in zip(batch.seqs, batch.num_new_tokens))
        sampled = model.run(batch, in_flight[1] if in_flight else None)
        apply_cancels(step, "mid")
        if overlap:
            finished = []
            if in_flight is not None:
                sampling, tokens = in_flight
                finished = [seq for seq in sampling
                            if not seq.is_finished and sched.record_token(seq, tokens[seq.seq_id])]
            in_flight = (sched.advance(batch), sampled) if batch.seqs else None
        else:
            finished = record_step(sched, batch, sampled)
        for seq in finished:
            assert seq.finish_reason in ("stop", "length")
            assert seq.seq_id not in returned_finished
            returned_finished.add(seq.seq_id)
        step += 1
        clock.t += dt

    pool = sched.block_manager.pool
    assert pool.num_free == pool.num_blocks and all(b.ref_count == 0 for b in pool.blocks), "leaked blocks"
    assert not sched.running and len(sched.waiting) == 0 and not sched._deferred
    for seq in all_seqs:
        assert seq.is_finished and transitions[seq.seq_id] == 1, f"seq {seq.seq_id} finished {transitions[seq.seq_id]}x"
        assert seq.finish_reason in ("stop", "length", "abort")
        assert (seq.finish_reason == "abort") == (seq.seq_id in aborted)
    return RunResult(seqs, aborted, sched.stats.num_preemptions, sched.stats.prefix_hit_tokens, num_chunked, step,
                     (sched.stats.draft_tokens, sched.stats.accepted_draft_tokens))


def check_outputs(reqs: list[Req], result: RunResult, salt: int, max_model_len: int) -> None:
    """Every sequence produced exactly what the model dictated; a cancelled one, a strict prefix of it."""
    for req, group in zip(reqs, result.seqs):
        for seq in group:
            want, reason = reference_output(req.prompt, req.params, seq.sample_index, salt, max_model_len)
            assert seq.token_ids[:seq.num_prompt_tokens] == req.prompt
            if seq.seq_id in result.aborted:
                got = output_ids(seq)
                assert len(got) < len(want) and got == want[:len(got)]
            else:
                assert (output_ids(seq), seq.finish_reason) == (want, reason), f"seq {seq.seq_id}"


# ----------------------------------------------------------------------------- strategies

@st.composite
def workloads(draw, with_cancels=True):
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    num_blocks = draw(st.integers(2, 12))
    max_model_len = num_blocks * block_size  # as the engine sets it: one sequence always fits the pool
    cfg = SchedulerConfig(
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(1, 24)),
        max_model_len=max_model_len,
        block_size=block_size,
        enable_prefix_caching=draw(st.booleans()),
        aging_seconds=draw(st.sampled_from([0.5, 1.0, 4.0, 1e6])),
        speculative_ngram=draw(st.sampled_from([0, 1, 3, 3])),
    )
    token = st.integers(1, VOCAB - 1)
    prefixes = draw(st.lists(st.lists(token, max_size=3 * block_size + 1), min_size=1, max_size=3))
    reqs = []
    for _ in range(draw(st.integers(1, 8))):
        prompt = draw(st.sampled_from(prefixes)) + draw(st.lists(token, max_size=2 * block_size))
        prompt = (prompt or [draw(token)])[:max_model_len - 1]
        max_tokens = draw(st.integers(1, 12))
        params = SamplingParams(
            n=draw(st.integers(1, 3)), max_tokens=max_tokens, min_tokens=draw(st.integers(0, min(2, max_tokens))),
            ignore_eos=draw(st.booleans()) and draw(st.booleans()),
            stop_token_ids=draw(st.sampled_from([[], [], [3]])),
            temperature=draw(st.sampled_from([0.0, 0.0, 1.0])))  # greedy ones draft (speculative_ngram > 0)
        reqs.append(Req(draw(st.integers(0, 12)), prompt, params,
                        priority=draw(st.integers(0, 3)), task=draw(st.sampled_from(["a", "b", "general"]))))
    cancels = []
    if with_cancels:
        cancels = draw(st.lists(st.builds(
            Cancel, st.integers(0, 16), st.integers(0, len(reqs) - 1),
            st.sampled_from(["all", "all", "leader", "last"]), st.sampled_from(["before", "mid"])), max_size=4))
    dt = draw(st.sampled_from([0.25, 0.5, 1.0]))
    salt = draw(st.integers(0, 2**16))
    return cfg, num_blocks, reqs, cancels, dt, salt


# ----------------------------------------------------------------------------- properties

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.booleans())
def test_random_traffic_keeps_every_invariant(w, overlap):
    """Properties 1-4 and 6 at every step; outputs equal the single-sequence reference (5); the
    same with overlapped steps (tokens recorded one step late) and with n-gram drafts, kept or not."""
    cfg, num_blocks, reqs, cancels, dt, salt = w
    result = drive(cfg, num_blocks, reqs, cancels, salt=salt, dt=dt, overlap=overlap)
    check_outputs(reqs, result, salt, cfg.max_model_len)
    event(f"preempted: {result.num_preemptions > 0}")
    event(f"prefix hit: {result.prefix_hit_tokens > 0}")
    event(f"chunked prefill: {result.num_chunked > 0}")
    event(f"cancelled: {len(result.aborted) > 0}")
    event(f"n>1: {any(r.params.n > 1 for r in reqs)}")
    event(f"overlap: {overlap and not cfg.speculative_ngram}")
    event(f"drafts kept: {result.drafts[1] > 0}; drafts rejected: {result.drafts[0] > result.drafts[1]}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(with_cancels=False))
def test_tiny_pool_output_equals_huge_pool_output(w):
    """Preemption and eviction under a tiny pool change nothing in what each sample generates."""
    cfg, num_blocks, reqs, _, dt, salt = w
    tiny = drive(cfg, num_blocks, reqs, salt=salt, dt=dt, overlap=True)
    huge_cfg = dataclasses.replace(cfg, max_num_seqs=64, max_num_batched_tokens=4096)
    huge = drive(huge_cfg, 512, reqs, salt=salt, dt=dt)
    assert huge.num_preemptions == 0
    for g_tiny, g_huge in zip(tiny.seqs, huge.seqs):
        assert [(s.token_ids, s.finish_reason) for s in g_tiny] == [(s.token_ids, s.finish_reason) for s in g_huge]


def _many_requests(block_size=4, n=2, count=6, prompt_len=9):
    reqs = []
    for r in range(count):
        prompt = [1 + (r + j) % (VOCAB - 1) for j in range(prompt_len)]
        reqs.append(Req(r % 3, prompt, SamplingParams(n=n, max_tokens=12, ignore_eos=True), priority=r % 2))
    return reqs


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption_happens_and_preserves_output(prefix_caching):
    cfg = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=8, max_model_len=32, block_size=4,
                          enable_prefix_caching=prefix_caching)
    reqs = _many_requests()
    tiny = drive(cfg, 8, reqs, salt=7)
    assert tiny.num_preemptions > 0
    assert any(s.num_preemptions for g in tiny.seqs for s in g)
    check_outputs(reqs, tiny, 7, cfg.max_model_len)
    huge = drive(dataclasses.replace(cfg, max_model_len=4096), 1024, reqs, salt=7)
    assert huge.num_preemptions == 0
    assert [[s.token_ids for s in g] for g in tiny.seqs] == [[s.token_ids for s in g] for g in huge.seqs]


# ----------------------------------------------------------------------------- priority and aging

def _starvation_run(aging: float, gap: int, dt: float, backlog: int, horizon: int, same_task: bool = False):
    """max_num_seqs=1 and one-token requests: exactly one request is served per step, while one
    high-priority request arrives per step on top of a backlog. Returns when the low one ran."""
    cfg = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8, max_model_len=64, block_size=4,
                          aging_seconds=aging)
    clock = FakeClock()
    sched = Scheduler(cfg, 16, STOP_RULE, clock=clock)
    ids = itertools.count()
    params = SamplingParams(max_tokens=1)

    def new(priority, task):
        i = next(ids)
        seq = Sequence(seq_id=i, request_id=str(i), token_ids=[1, 2], num_prompt_tokens=2, params=params,
                       arrival_time=clock.t, task=task, priority=priority)
        sched.add([seq])
        return seq

    for _ in range(backlog):
        new(0, "hi")
    low = new(gap, "hi" if same_task else "lo")
    for step in range(horizon):
        new(0, "hi")
        batch = sched.schedule()
        assert len(batch.seqs) == 1
        if batch.seqs[0] is low:
            return step, clock.t
        record_step(sched, batch, {batch.seqs[0].seq_id: 5})
        clock.t += dt
    return None, clock.t


@settings(max_examples=60, deadline=None)
@given(aging=st.sampled_from([0.5, 1.0, 2.0, 3.0]), gap=st.integers(1, 4), dt=st.sampled_from([0.25, 0.5, 1.0]),
       backlog=st.integers(0, 5), same_task=st.booleans())
def test_aging_bounds_the_wait_of_a_low_priority_request(aging, gap, dt, backlog, same_task):
    """Under a stream of higher-priority arrivals as fast as the service, the low-priority request
    runs once it has waited gap * aging_seconds plus the time to serve what arrived before then."""
    bound = gap * aging + (backlog + 2) * dt
    step, t = _starvation_run(aging, gap, dt, backlog, int(bound / dt) + 50, same_task)
    assert step is not None and t <= bound + EPS, (step, t, bound)
    # ... and not before its effective priority caught up with the stream's (no priority inversion).
    assert t >= gap * aging - EPS


def test_without_aging_the_stream_starves_the_low_priority_request():
    step, _ = _starvation_run(aging=1e9, gap=1, dt=1.0, backlog=2, horizon=200)
    assert step is None


@pytest.mark.parametrize("same_task", [True, False])
@pytest.mark.parametrize("high_arrival, first", [(5.0, "high"), (35.0, "low")])
def test_priority_order_until_aging_closes_the_gap(same_task, high_arrival, first):
    cfg = SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=64, max_model_len=64, block_size=4,
                          aging_seconds=10.0)
    clock = FakeClock()
    sched = Scheduler(cfg, 16, clock=clock)
    params = SamplingParams(max_tokens=1)
    blocker = Sequence(0, "blocker", [1, 2, 3], 3, params, arrival_time=0.0, task="general", priority=0)
    sched.add([blocker])
    assert sched.schedule().seqs == [blocker]
    low = Sequence(1, "low", [1, 2], 2, params, arrival_time=0.0, task="x", priority=3)
    high = Sequence(2, "high", [1, 2], 2, params, arrival_time=high_arrival, task="x" if same_task else "y",
                    priority=0)
    sched.add([low])
    sched.add([high])
    # At t = arrival + 1: high's effective priority is -0.1; low's is 3 - t/10 (2.4 at t=6, -0.6 at t=36).
    clock.t = high_arrival + 1.0
    sched.finish(blocker, "abort")
    assert sched.schedule().seqs == [{"high": high, "low": low}[first]]


# ----------------------------------------------------------------------------- edge cases

def _sched(num_blocks=16, **kw):
    cfg = SchedulerConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 256,
                             "block_size": 4, **kw})
    return Scheduler(cfg, num_blocks, STOP_RULE, clock=FakeClock())


def _seqs(sched, ids, prompt, n=1, max_tokens=4):
    params = SamplingParams(n=n, max_tokens=max_tokens, ignore_eos=True)
    group = [Sequence(next(ids), "r", list(prompt), len(prompt), params, arrival_time=sched.clock(),
                      task="general", priority=0, sample_index=i) for i in range(n)]
    sched.add(group)
    return group


def _step(sched, model):
    batch = sched.schedule()
    return batch, record_step(sched, batch, model.run(batch))


def _run_to_end(sched, model, limit=500):
    for _ in range(limit):
        if not has_work(sched):
            return
        _step(sched, model)
    raise AssertionError("did not finish")


def _assert_empty(sched):
    pool = sched.block_manager.pool
    pool.check_invariants()
    assert not has_work(sched) and not sched._deferred
    assert pool.num_free == pool.num_blocks and all(b.ref_count == 0 for b in pool.blocks)


def test_cancel_a_waiting_request():
    sched = _sched(num_blocks=2, max_num_seqs=1)
    model, ids = FakeModel(sched, 0), itertools.count()
    (first,) = _seqs(sched, ids, [1, 2, 3], max_tokens=3)
    (queued,) = _seqs(sched, ids, [4, 5, 1])
    _step(sched, model)
    assert first.status is SeqStatus.RUNNING and queued.status is SeqStatus.WAITING
    sched.finish(queued, "abort")
    assert queued.finish_reason == "abort" and len(sched.waiting) == 0
    _run_to_end(sched, model)
    assert first.finish_reason == "length" and queued.num_output_tokens == 0
    _assert_empty(sched)


@pytest.mark.parametrize("mid_step", [False, True])
def test_cancel_a_running_request_mid_prefill(mid_step):
    sched = _sched(max_num_batched_tokens=3)
    model, ids = FakeModel(sched, 0), itertools.count()
    (seq,) = _seqs(sched, ids, list(range(1, 6)) * 2)
    _step(sched, model)
    assert seq.status is SeqStatus.RUNNING and 0 < seq.num_computed_tokens < seq.num_prompt_tokens
    batch = sched.schedule()
    if mid_step:  # cancelled while the forward ran: recording the step must skip it
        sampled = model.run(batch)
        sched.finish(seq, "abort")
        assert record_step(sched, batch, sampled) == [] and seq.num_output_tokens == 0
    else:
        sched.finish(seq, "abort")
    assert seq.finish_reason == "abort" and seq.num_output_tokens == 0 and not seq.block_table
    _assert_empty(sched)
    sched.finish(seq, "stop")  # finishing twice changes nothing
    assert seq.finish_reason == "abort"


@pytest.mark.parametrize("when", ["deferred", "mid_prefill", "decoding"])
def test_cancel_the_leader_of_an_n_sample_request(when):
    sched = _sched(max_num_batched_tokens=4)
    salt = 3
    model, ids = FakeModel(sched, salt), itertools.count()
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4]
    group = _seqs(sched, ids, prompt, n=3, max_tokens=5)
    leader, siblings = group[0], group[1:]
    if when != "deferred":
        _step(sched, model)
        assert leader.status is SeqStatus.RUNNING
        assert all(s.status is SeqStatus.WAITING and s not in list(sched.waiting) for s in siblings)
    if when == "decoding":
        while leader.num_output_tokens == 0:
            _step(sched, model)
        _step(sched, model)
        assert all(s.status is SeqStatus.RUNNING for s in siblings)
    sched.finish(leader, "abort")
    assert leader.finish_reason == "abort" and not leader.block_table
    _run_to_end(sched, model)
    for s in siblings:
        want, reason = reference_output(prompt, s.params, s.sample_index, salt, 256)
        assert (output_ids(s), s.finish_reason) == (want, reason)
    _assert_empty(sched)


def test_cancel_a_whole_n_sample_request_with_deferred_siblings():
    sched = _sched(max_num_batched_tokens=4)
    model, ids = FakeModel(sched, 0), itertools.count()
    group = _seqs(sched, ids, [1, 2, 3, 4, 5, 1, 2, 3, 4], n=3)
    _step(sched, model)
    for s in group:  # as LLMEngine.abort_request does
        sched.finish(s, "abort")
    assert all(s.finish_reason == "abort" for s in group)
    _assert_empty(sched)


@pytest.mark.parametrize("blocks_in_prompt", [1, 2])
def test_prompt_that_exactly_fills_blocks(blocks_in_prompt):
    sched = _sched()
    bs = sched.config.block_size
    model, ids = FakeModel(sched, 0), itertools.count()
    prompt = [1 + i % (VOCAB - 1) for i in range(bs * blocks_in_prompt)]
    (a,) = _seqs(sched, ids, prompt, max_tokens=3)
    batch, _ = _step(sched, model)
    assert batch.num_new_tokens == [len(prompt)] and len(a.block_table) == blocks_in_prompt
    assert a.num_output_tokens == 1 and a.num_cached_blocks == blocks_in_prompt
    _step(sched, model)  # the first output token opens a new block
    assert len(a.block_table) == blocks_in_prompt + 1
    # The same prompt again: the last block is not reused, since its last token must be computed.
    (b,) = _seqs(sched, ids, prompt, max_tokens=3)
    batch = sched.schedule()
    i = batch.seqs.index(b)
    assert batch.num_new_tokens[i] == bs and samples(b, bs)
    assert b.block_table[:blocks_in_prompt - 1] == a.block_table[:blocks_in_prompt - 1]
    assert b.block_table[blocks_in_prompt - 1] not in a.block_table
    record_step(sched, batch, model.run(batch))
    _run_to_end(sched, model)
    assert output_ids(a) == output_ids(b) and len(output_ids(a)) == 3
    _assert_empty(sched)


def test_prefix_cache_hit_leaves_exactly_one_token_to_compute():
    sched = _sched()
    bs = sched.config.block_size
    model, ids = FakeModel(sched, 0), itertools.count()
    shared = [1, 2, 3, 4, 5, 1, 2, 3]
    (a,) = _seqs(sched, ids, shared, max_tokens=1)
    _run_to_end(sched, model)  # a finished: its two blocks are free but still cached
    assert sched.block_manager.pool.num_free == sched.block_manager.num_blocks
    (b,) = _seqs(sched, ids, shared + [4], max_tokens=2)
    batch = sched.schedule()
    assert batch.seqs == [b] and batch.num_new_tokens == [1] and samples(b, 1)
    assert b.num_computed_tokens == 2 * bs and b.num_cached_blocks == 2
    assert sched.stats.prefix_hit_tokens == 2 * bs
    record_step(sched, batch, model.run(batch))
    _run_to_end(sched, model)
    want, _ = reference_output(shared + [4], b.params, 0, 0, 256)
    assert output_ids(b) == want
    _assert_empty(sched)


def test_shared_prefix_blocks_are_shared_not_copied():
    sched = _sched(max_num_batched_tokens=64)
    model, ids = FakeModel(sched, 0), itertools.count()
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    group = _seqs(sched, ids, prompt, n=3, max_tokens=3)
    _step(sched, model)
    _step(sched, model)
    tables = [s.block_table for s in group]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]
    assert len({t[2] for t in tables}) == 3
    assert [sched.block_manager.pool.blocks[b].ref_count for b in tables[0][:2]] == [3, 3]
    _run_to_end(sched, model)
    _assert_empty(sched)
