"""The KV block pool and block manager against a plain model: reference counts, the LRU free list
(allocation takes the least recently freed block), lazy eviction of cached blocks, and
all-or-nothing allocation."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kv_cache.block_manager import BlockManager
from kv_cache.block_pool import BlockPool

NUM_BLOCKS = 6


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool = BlockPool(NUM_BLOCKS)
        self.refs = [0] * NUM_BLOCKS
        self.free_order = list(range(NUM_BLOCKS))   # cold end first
        self.cached: dict[int, tuple[int, tuple]] = {}  # hash -> (block id, content)
        self.held: list[int] = []                   # one entry per reference we own

    def _forget(self, b):
        for h, (bid, _) in list(self.cached.items()):
            if bid == b:
                del self.cached[h]

    @rule(n=st.integers(0, NUM_BLOCKS + 1))
    def allocate(self, n):
        if n > len(self.free_order):
            try:
                self.pool.allocate(n)
            except RuntimeError:
                return
            raise AssertionError("allocated more blocks than were free")
        got = [b.block_id for b in self.pool.allocate(n)]
        assert got == self.free_order[:n], "allocation must take the least recently freed blocks"
        del self.free_order[:n]
        for b in got:
            self._forget(b)
            self.refs[b] = 1
            self.held.append(b)
            assert self.pool.blocks[b].block_hash is None and self.pool.blocks[b].content is None

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data):
        b = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.pool.release([self.pool.blocks[b]])
        self.refs[b] -= 1
        if self.refs[b] == 0:
            self.free_order.append(b)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), h=st.integers(0, 4), tokens=st.lists(st.integers(0, 2), max_size=2))
    def register(self, data, h, tokens):
        b = data.draw(st.sampled_from(self.held))
        content = (None, tuple(tokens))
        self.pool.register(self.pool.blocks[b], h, content)
        if h not in self.cached and all(bid != b for bid, _ in self.cached.values()):
            self.cached[h] = (b, content)

    @rule(h=st.integers(0, 4), tokens=st.lists(st.integers(0, 2), max_size=2), take=st.booleans())
    def lookup_and_acquire(self, h, tokens, take):
        content = (None, tuple(tokens))
        block = self.pool.lookup(h, content)
        want = self.cached.get(h)
        if want is None or want[1] != content:
            assert block is None
            return
        assert block is not None and block.block_id == want[0]
        if take:
            expected = len(self.free_order) - (self.refs[block.block_id] == 0)
            assert self.pool.num_free_after_acquiring([block]) == expected
            self.pool.acquire([block])
            if self.refs[block.block_id] == 0:
                self.free_order.remove(block.block_id)
            self.refs[block.block_id] += 1
            self.held.append(block.block_id)
            assert self.pool.num_free == expected

    @invariant()
    def agrees_with_model(self):
        self.pool.check_invariants()
        assert [b.ref_count for b in self.pool.blocks] == self.refs
        assert list(self.pool._free) == self.free_order
        assert self.pool.num_free + sum(1 for r in self.refs if r) == NUM_BLOCKS
        assert {h: (b.block_id, b.content) for h, b in self.pool._cached.items()} == self.cached


TestBlockPool = PoolMachine.TestCase
TestBlockPool.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@dataclasses.dataclass
class Seq:
    token_ids: list[int]
    num_computed_tokens: int = 0
    block_table: list[int] = dataclasses.field(default_factory=list)
    block_hashes: list[int] = dataclasses.field(default_factory=list)
    num_cached_blocks: int = 0


@settings(max_examples=150, deadline=None)
@given(block_size=st.integers(1, 4), num_blocks=st.integers(1, 8),
       prompts=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=12), min_size=1, max_size=6),
       keep=st.lists(st.booleans(), min_size=6, max_size=6))
def test_block_manager_allocates_all_or_nothing_and_frees_everything(block_size, num_blocks, prompts, keep):
    """Admit prompts one after another (as the scheduler does): a failed allocation changes nothing,
    a successful one covers the prompt, shares only cached full blocks, and freeing returns all."""
    bm = BlockManager(num_blocks, block_size)
    pool = bm.pool
    live = []
    for prompt, stay in zip(prompts, keep):
        seq = Seq(list(prompt))
        cached = bm.match_prefix(seq)
        assert len(cached) * block_size < len(prompt), "at least one token is left to compute"
        before = ([b.ref_count for b in pool.blocks], list(pool._free))
        if not bm.allocate(seq, len(prompt), cached):
            assert ([b.ref_count for b in pool.blocks], list(pool._free)) == before and not seq.block_table
            continue
        assert len(seq.block_table) == -(-len(prompt) // block_size)
        assert seq.block_table[:len(cached)] == [b.block_id for b in cached]
        seq.num_computed_tokens = len(prompt)
        bm.cache_computed_blocks(seq)
        live.append(seq)
        if not stay:
            bm.free(live.pop(0))
        pool.check_invariants()
        for b in pool.blocks:
            holders = [s for s in live if b.block_id in s.block_table]
            assert b.ref_count == len(holders)
            if len(holders) > 1:  # shared only as a full cached block of identical content
                assert b.block_hash is not None
                for s in holders:
                    i = s.block_table.index(b.block_id)
                    assert tuple(s.token_ids[i * block_size:(i + 1) * block_size]) == b.content[1]
    for seq in live:
        bm.free(seq)
    pool.check_invariants()
    assert pool.num_free == num_blocks and all(b.ref_count == 0 for b in pool.blocks)
