"""Per-sequence block tables over the pool, with prefix caching by chained block hashes."""

from __future__ import annotations

from typing import Protocol

from kv_cache.block_pool import Block, BlockPool


class PagedSequence(Protocol):
    """What the block manager reads and writes on a sequence."""

    token_ids: list[int]
    num_computed_tokens: int
    block_table: list[int]
    block_hashes: list[int]
    num_cached_blocks: int


class BlockManager:
    """Allocates, caches and frees the blocks behind each sequence's block table.

    A block's hash covers its own tokens and, through its parent's hash, every token before it, so
    equal hashes mean equal prefixes (checked on content, since Python hashes can collide).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def _extend_hashes(self, seq: PagedSequence, num_blocks: int) -> None:
        bs = self.block_size
        for i in range(len(seq.block_hashes), num_blocks):
            parent = seq.block_hashes[i - 1] if i else None
            seq.block_hashes.append(hash((parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))))

    def _content(self, seq: PagedSequence, i: int) -> tuple:
        parent = seq.block_hashes[i - 1] if i else None
        return parent, tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])

    def match_prefix(self, seq: PagedSequence) -> list[Block]:
        """Cached blocks covering the longest computed prefix of a new sequence.

        At least one token is always left to compute, since its logits are needed to sample.
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (len(seq.token_ids) - 1) // self.block_size
        self._extend_hashes(seq, max_blocks)
        hits = []
        for i in range(max_blocks):
            block = self.pool.lookup(seq.block_hashes[i], self._content(seq, i))
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate(self, seq: PagedSequence, num_tokens: int, cached: list[Block] = ()) -> bool:
        """Grow the table to hold `num_tokens` tokens, first adopting `cached` prefix blocks.

        Returns False, changing nothing, when the pool cannot supply the blocks.
        """
        needed = -(-num_tokens // self.block_size) - len(seq.block_table) - len(cached)
        if needed <= 0 and not cached:  # the common decode step: the last block has room
            return True
        if needed > self.pool.num_free_after_acquiring(cached):
            return False
        if cached:
            self.pool.acquire(cached)
            seq.block_table.extend(b.block_id for b in cached)
            seq.num_cached_blocks = len(seq.block_table)
        if needed > 0:
            seq.block_table.extend(b.block_id for b in self.pool.allocate(needed))
        return True

    def cache_computed_blocks(self, seq: PagedSequence, num_tokens: int | None = None) -> None:
        """Publish the blocks this sequence has completely filled with computed K/V (within its first
        `num_tokens` tokens, if given: those that are not drafts)."""
        if not self.enable_prefix_caching:
            return
        computed = seq.num_computed_tokens if num_tokens is None else min(seq.num_computed_tokens, num_tokens)
        num_full = computed // self.block_size
        if num_full <= seq.num_cached_blocks:
            return
        self._extend_hashes(seq, num_full)
        for i in range(seq.num_cached_blocks, num_full):
            self.pool.register(self.pool.blocks[seq.block_table[i]], seq.block_hashes[i], self._content(seq, i))
        seq.num_cached_blocks = num_full

    def trim(self, seq: PagedSequence, num_tokens: int) -> None:
        """Return the blocks past the first `num_tokens` tokens (those a rejected draft took)."""
        keep = -(-num_tokens // self.block_size)
        if len(seq.block_table) > keep:
            self.pool.release(self.pool.blocks[i] for i in reversed(seq.block_table[keep:]))
            del seq.block_table[keep:]

    def free(self, seq: PagedSequence) -> None:
        """Return a sequence's blocks; its tail goes first in eviction order, its prefix last."""
        self.pool.release(self.pool.blocks[i] for i in reversed(seq.block_table))
        seq.block_table.clear()
        seq.num_cached_blocks = 0
