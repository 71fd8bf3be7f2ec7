"""Paged KV blocks with reference counts and prefix hashing.

A sequence's KV lives in fixed-size blocks of the pool; its `block_table` lists them. Every
full block is registered under a hash of its tokens chained with the hash of the blocks
before it, so a later sequence whose prompt starts with the same tokens shares those blocks
instead of recomputing them. Freed blocks keep their hash and contents until they are
handed out again (oldest first), so a repeated prefix hits even after its first owner ended.
"""

from __future__ import annotations

from collections import OrderedDict

from glassbox.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


def chain_hash(prefix_hash: int | None, token_ids: list[int] | tuple[int, ...]) -> int:
    return hash((prefix_hash, tuple(token_ids)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block: dict[int, int] = {}
        # Free blocks in eviction order: the oldest freed is reused first (an LRU of cached
        # prefixes). OrderedDict gives O(1) removal when a cached free block is hit again.
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.prefix_hits = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return len(self.blocks) - len(self.free)

    def _take(self, block_id: int | None = None) -> Block:
        if block_id is None:
            block_id, _ = self.free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = None
            block.token_ids = ()
        else:
            del self.free[block_id]
            block = self.blocks[block_id]
        block.ref_count = 1
        return block

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None

    def _register(self, block: Block, prefix_hash: int | None, token_ids: list[int]) -> None:
        block.hash = chain_hash(prefix_hash, token_ids)
        block.token_ids = tuple(token_ids)
        self.hash_to_block[block.hash] = block.block_id

    def can_allocate(self, seq: Sequence) -> bool:
        return self.num_free >= seq.num_blocks

    def allocate(self, seq: Sequence, use_cache: bool = True) -> None:
        """Give `seq` blocks for all its tokens, reusing cached full blocks of its prefix
        (unless `use_cache` is off: activation capture needs every position computed).

        The block holding the last token is never taken from the cache: that token must be
        computed to produce the logits of the next one.
        """
        assert not seq.block_table
        prefix_hash: int | None = None
        cache_miss = not use_cache
        last_full = (len(seq) - 1) // self.block_size  # blocks before this one are reusable
        for i in range(seq.num_blocks):
            tokens = seq.block_tokens(i)
            full = len(tokens) == self.block_size
            block_id = None
            if full and i < last_full and not cache_miss:
                h = chain_hash(prefix_hash, tokens)
                candidate = self.hash_to_block.get(h)
                if candidate is not None and self.blocks[candidate].token_ids == tuple(tokens):
                    block_id = candidate
                    self.prefix_hits += 1
                else:
                    cache_miss = True
            if block_id is not None:
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    self._take(block_id)
                else:
                    block.ref_count += 1
                seq.num_cached_tokens += self.block_size
            else:
                cache_miss = True
                block = self._take()
                if full:
                    self._register(block, prefix_hash, tokens)
            prefix_hash = block.hash
            seq.block_table.append(block.block_id)
        seq.num_computed_tokens = seq.num_cached_tokens

    def free_sequence(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_cached_tokens = 0
        seq.num_computed_tokens = 0

    def can_append(self, seq: Sequence) -> bool:
        """Room for the KV of the token appended last (a new block when it starts one)."""
        return self.num_free >= (1 if len(seq) % self.block_size == 1 else 0)

    def may_append(self, seq: Sequence) -> None:
        """Called after `seq` grew by one token: add a block or register a filled one."""
        n = len(seq)
        if n % self.block_size == 1 and len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take().block_id)
        elif n % self.block_size == 0:
            i = n // self.block_size - 1
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                prev = self.blocks[seq.block_table[i - 1]].hash if i > 0 else None
                self._register(block, prev, seq.block_tokens(i))
