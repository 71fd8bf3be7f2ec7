"""Which states have their KV in the engine's pool, least recently used first, and how many
bytes of the pool they hold. A block shared by several states (a fork and its parent)
counts once: forking adds no bytes."""

from __future__ import annotations

from collections import Counter, OrderedDict

from glassbox.engine.block_manager import KVHandle


class Residency:
    def __init__(self, budget_bytes: int, block_bytes: int):
        self.budget_bytes = budget_bytes
        self.block_bytes = block_bytes
        self._handles: OrderedDict[str, KVHandle] = OrderedDict()
        self._blocks: Counter[int] = Counter()

    def __contains__(self, state_id: str) -> bool:
        return state_id in self._handles

    def __len__(self) -> int:
        return len(self._handles)

    @property
    def bytes(self) -> int:
        return len(self._blocks) * self.block_bytes

    def get(self, state_id: str) -> KVHandle | None:
        """The state's handle, marking it most recently used."""
        handle = self._handles.get(state_id)
        if handle is not None:
            self._handles.move_to_end(state_id)
        return handle

    def add(self, state_id: str, handle: KVHandle) -> None:
        assert state_id not in self._handles
        self._handles[state_id] = handle
        self._blocks.update(handle.block_ids)

    def remove(self, state_id: str) -> KVHandle:
        handle = self._handles.pop(state_id)
        self._blocks.subtract(handle.block_ids)
        for block_id in handle.block_ids:
            if self._blocks[block_id] == 0:
                del self._blocks[block_id]
        return handle

    def victims(self, keep: str | None = None) -> list[str]:
        """The least recently used states to spill, oldest first, until the rest fits the
        budget. `keep` (the state in use) goes last, only if it alone is over budget."""
        if self.bytes <= self.budget_bytes:
            return []
        blocks = Counter(self._blocks)
        chosen = []
        order = [s for s in self._handles if s != keep] + ([keep] if keep in self else [])
        for state_id in order:
            if len(blocks) * self.block_bytes <= self.budget_bytes:
                break
            chosen.append(state_id)
            blocks.subtract(self._handles[state_id].block_ids)
            blocks = +blocks  # drop the blocks no other resident state holds
        return chosen

    def ids(self) -> list[str]:
        return list(self._handles)
