"""Paged KV blocks with reference counts and prefix hashing.

A sequence's KV lives in fixed-size blocks of the pool; its `block_table` lists them. Every
full block is registered under a hash of its tokens chained with the hash of the blocks
before it, so a later sequence whose prompt starts with the same tokens shares those blocks
instead of recomputing them. Freed blocks keep their hash and contents until they are
handed out again (oldest first), so a repeated prefix hits even after its first owner ended.

A block is registered only when both hold (see `_register_full`): the block before it is
registered (so the chain really starts at the sequence's first token: a hash chained from
None means "the first block of a prompt", and a prompt that hits it reads its KV at
positions 0..block_size-1), and its KV is `plain`, what the plain model computes for its
tokens. KV loaded into the pool (`take_blocks`: a state imported or read back from its
file) and KV computed under steering are neither: they are never registered, and nothing
after them in a sequence is either.

A `KVHandle` holds references on the blocks of a token sequence whose KV was computed (a
KV state, or a lease a running sequence takes on one): while it lives, those blocks are
never handed out. Sharing a handle costs reference counts, never KV bytes; a sequence that
continues from a handle copies only the partial last block, which it would write into.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from glassbox.engine.errors import OutOfBlocks
from glassbox.engine.sequence import Sequence


@dataclass(frozen=True)
class KVHandle:
    """The KV of `token_ids[:num_kv]` in `block_ids` (one reference held on each).

    `num_kv` is `len(token_ids) - 1`: the last token is computed by whoever continues, which
    is what yields the logits of the token after it."""

    token_ids: tuple[int, ...]
    block_ids: tuple[int, ...]

    @property
    def num_kv(self) -> int:
        return len(self.token_ids) - 1


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "plain")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()
        # Its KV was written by the plain model (no steering, not loaded from elsewhere),
        # or copied from such a block: only such a block may enter the prefix cache.
        self.plain = False


def chain_hash(prefix_hash: int | None, token_ids: list[int] | tuple[int, ...]) -> int:
    return hash((prefix_hash, tuple(token_ids)))


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        copy_block: Callable[[int, int], None] = lambda src, dst: None,
    ):
        self.block_size = block_size
        self.copy_block = copy_block  # copies a block's KV (src -> dst) in the pool
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

    def _take(self, block_id: int | None = None, plain: bool = False) -> Block:
        """A free block: the oldest freed (forgetting its cached prefix; `plain`: its new
        owner computes its KV with the plain model), or cached `block_id` (a prefix hit)."""
        if block_id is None:
            block_id, _ = self.free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = None
            block.token_ids = ()
            block.plain = plain
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

    def _register_full(self, seq: Sequence, i: int) -> None:
        """Register `seq`'s full block `i` unless it is registered already, or its hash
        chain would not start at the sequence's first token, or its KV is not plain.

        Without a hash on block `i - 1` (KV loaded by `take_blocks`, or steered, or the
        prompt a continuation computed after its state: see `register_computed`), chaining
        from None would register block `i` as the first block of a prompt, and a prompt
        starting with its tokens would reuse KV computed at other positions, after other
        tokens. A registered block's predecessors are all registered, hence plain: the
        whole chain is the plain model's KV of the sequence's first tokens."""
        block = self.blocks[seq.block_table[i]]
        if block.hash is not None or not block.plain:
            return
        prev = None
        if i > 0:
            prev = self.blocks[seq.block_table[i - 1]].hash
            if prev is None:
                return
        self._register(block, prev, seq.block_tokens(i))

    def can_allocate(self, seq: Sequence) -> bool:
        shared = seq.prefix.num_kv // self.block_size if seq.prefix is not None else 0
        return self.num_free >= seq.num_blocks - shared

    def allocate(self, seq: Sequence, use_cache: bool = True, register: bool = True) -> None:
        """Give `seq` blocks for all its tokens, reusing cached full blocks of its prefix
        (unless `use_cache` is off: activation capture needs every position computed).

        The block holding the last token is never taken from the cache: that token must be
        computed to produce the logits of the next one. A steered sequence neither reuses
        cached blocks nor registers its own: its KV is not what the plain model computes.
        `register`: register its new full blocks now (the caller computes all its tokens in
        its next run); without it, `register_computed` registers them chunk by chunk.
        """
        assert not seq.block_table
        if seq.prefix is not None:
            self._allocate_from(seq, seq.prefix)
            return
        prefix_hash: int | None = None
        steered = _steered(seq)
        cache_miss = not use_cache or steered
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
                block = self._take(plain=not steered)
            prefix_hash = block.hash
            seq.block_table.append(block.block_id)
        seq.num_computed_tokens = seq.num_cached_tokens
        if register:
            self.register_computed(seq, len(seq))

    def register_computed(self, seq: Sequence, end: int) -> None:
        """Register the full blocks among `seq`'s first `end` tokens, whose KV is computed
        (or is computed in the step about to run), so later prompts share them. A block is
        never registered before the step that computes it: another prompt would read KV that
        is not there (a chunked prefill allocates every block of its prompt at once).
        A sequence continuing a state registers none of its prompt (only the blocks it
        fills decoding, when their chain is valid: see `may_append`)."""
        if seq.prefix is not None or _steered(seq):
            return
        for i in range(end // self.block_size):
            self._register_full(seq, i)

    def _allocate_from(self, seq: Sequence, prefix: KVHandle) -> None:
        """Share the full blocks of `prefix`; copy its partial last block (copy-on-write:
        `seq` writes its next tokens there, the prefix's other holders must not see them)."""
        full, partial = divmod(prefix.num_kv, self.block_size)
        plain = not _steered(seq)
        for block_id in prefix.block_ids[:full]:
            self.blocks[block_id].ref_count += 1
            seq.block_table.append(block_id)
        if partial:
            # The copy holds the prefix's KV for its first tokens: it is plain only if that
            # was (not loaded, not steered) and `seq` writes the rest with the plain model.
            src = self.blocks[prefix.block_ids[full]]
            block = self._take(plain=plain and src.plain)
            self.copy_block(src.block_id, block.block_id)
            seq.block_table.append(block.block_id)
        while len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take(plain=plain).block_id)
        seq.num_cached_tokens = seq.num_computed_tokens = prefix.num_kv

    def hold(self, token_ids: list[int] | tuple[int, ...], block_ids: list[int]) -> KVHandle:
        """A new handle on the blocks holding the KV of `token_ids[:-1]` (the first
        blocks of `block_ids`)."""
        n = (len(token_ids) - 1 + self.block_size - 1) // self.block_size
        assert len(block_ids) >= n, "fewer blocks than the tokens' KV needs"
        for block_id in block_ids[:n]:
            block = self.blocks[block_id]
            assert block.ref_count > 0, "holding a free block"
            block.ref_count += 1
        return KVHandle(tuple(token_ids), tuple(block_ids[:n]))

    def share(self, handle: KVHandle, num_tokens: int | None = None) -> KVHandle:
        """Another handle on the same KV, or on its first `num_tokens` tokens (>= 1)."""
        tokens = handle.token_ids if num_tokens is None else handle.token_ids[:num_tokens]
        return self.hold(tokens, list(handle.block_ids))

    def release(self, handle: KVHandle) -> None:
        for block_id in reversed(handle.block_ids):
            self._release(block_id)

    def take_blocks(self, n: int) -> list[int]:
        """`n` fresh blocks (one reference each) to load KV into; fails if the pool is full.

        They are not `plain` and never get a hash, so neither they nor anything a sequence
        computes after them enters the prefix cache. Hashing them (the tokens are known)
        would keep prefix reuse for restored states, but the KV is only as good as its
        file: a state committed under steering holds steered KV, and an imported file holds
        whatever its uploader put there; in the shared cache either would be read by other
        prompts (other tenants') as the plain model's. States are reused through their
        handles (forks share blocks), which needs no prefix cache."""
        if n > self.num_free:
            raise OutOfBlocks(f"the KV pool has {self.num_free} free blocks, {n} needed")
        return [self._take().block_id for _ in range(n)]

    def free_sequence(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_cached_tokens = 0
        seq.num_computed_tokens = 0

    def can_append(self, seq: Sequence) -> bool:
        """Room for the KV of the token appended last (a new block when it starts one)."""
        return self.num_free >= (1 if len(seq.block_table) < seq.num_blocks else 0)

    def may_append(self, seq: Sequence) -> None:
        """Called after `seq` grew by one token: add a block or register a filled one."""
        n = len(seq)
        if n % self.block_size == 1 and len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take(plain=not _steered(seq)).block_id)
        elif n % self.block_size == 0 and not _steered(seq):
            self._register_full(seq, n // self.block_size - 1)


def _steered(seq: Sequence) -> bool:
    plan = seq.params.steering
    return plan is not None and not plan.is_empty
