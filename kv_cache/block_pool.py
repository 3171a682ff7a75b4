"""A fixed pool of KV blocks: O(1) allocation from an LRU free list, reference counts, and a
content-addressed table of computed blocks that stay reusable until their slot is needed again."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable


@dataclasses.dataclass(slots=True, eq=False)
class Block:
    """One block of `block_size` token slots in every layer's K and V tensors."""

    block_id: int
    ref_count: int = 0
    # Set once the block is full and computed: the hash of its prefix chain and, for collision
    # checks, exactly what that hash stands for.
    block_hash: int | None = None
    content: tuple | None = None


class BlockPool:
    """Owns every block. Invariant: a block is in the free list exactly when its ref_count is 0.

    Freed blocks keep their cached content (lazy eviction); allocation takes the least recently
    freed block and only then forgets what it held.
    """

    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[int, Block] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[Block]:
        """Take n blocks from the cold end of the free list; the caller checked `num_free`."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks with only {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                block.block_hash = block.content = None
            block.ref_count = 1
            out.append(block)
        return out

    def acquire(self, blocks: Iterable[Block]) -> None:
        """Add a reference to cached blocks found by `lookup` (reviving them if free)."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def release(self, blocks: Iterable[Block]) -> None:
        """Drop a reference; blocks reaching zero go to the hot end of the free list, in order."""
        for block in blocks:
            assert block.ref_count > 0, f"block {block.block_id} released more often than acquired"
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def lookup(self, block_hash: int, content: tuple) -> Block | None:
        """The cached block with this hash, if its content really matches (hashes can collide)."""
        block = self._cached.get(block_hash)
        return block if block is not None and block.content == content else None

    def register(self, block: Block, block_hash: int, content: tuple) -> None:
        """Publish a full, computed block for reuse. The first block with a given hash wins."""
        if block.block_hash is None and block_hash not in self._cached:
            block.block_hash, block.content = block_hash, content
            self._cached[block_hash] = block

    def num_free_after_acquiring(self, blocks: Iterable[Block]) -> int:
        """Free blocks left once `blocks` (cache hits, possibly free themselves) are acquired."""
        return len(self._free) - sum(1 for b in blocks if b.ref_count == 0)

    def check_invariants(self) -> None:
        """Free list and reference counts agree, and the cache table points at its blocks."""
        free_ids = set(self._free)
        assert all((b.ref_count == 0) == (b.block_id in free_ids) for b in self.blocks)
        assert all(b.ref_count >= 0 for b in self.blocks)
        assert all(b.block_hash == h for h, b in self._cached.items())
