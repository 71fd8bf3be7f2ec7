"""Waiting and running queues: prefill new sequences first, then decode everyone running."""

from __future__ import annotations

from collections import deque

from glassbox.engine.block_manager import BlockManager
from glassbox.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences to run this step and whether the step is a prefill."""
        scheduled: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            if scheduled and tokens + len(seq) > self.max_num_batched_tokens:
                break
            self.block_manager.allocate(seq)
            tokens += len(seq) - seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            if len(seq) - seq.num_computed_tokens == 1:
                # Only its last token to compute (a KV state continued): that is a decode
                # step, so it joins the decode batch, and its kernels, instead of a prefill.
                self.running.append(seq)
            else:
                scheduled.append(seq)
        if scheduled:
            self.running.extend(scheduled)
            return scheduled, True

        while self.running:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.may_append(seq)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled, False

    def preempt(self, seq: Sequence) -> None:
        """Out of blocks: give this sequence's back; it is recomputed when it runs again."""
        seq.status = SequenceStatus.WAITING
        self.block_manager.free_sequence(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free_sequence(seq)
        if seq.prefix is not None:
            self.block_manager.release(seq.prefix)
            seq.prefix = None
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
