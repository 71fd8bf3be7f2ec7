"""Waiting, prefilling and running queues; prefill steps in chunks between decode steps.

A step is either a prefill (prompts, or the next chunk of prompts) or a decode (one token for
every running sequence). While sequences decode, the two alternate: one prefill step of at
most `prefill_chunk_tokens` prompt tokens, then one decode step of everyone running, so a
long prompt that arrives delays each running stream by at most one chunk per token. With
nothing decoding, a prefill step takes up to `max_num_batched_tokens`.

A sequence whose prompt is only partly computed waits in `prefilling` with all its blocks
(allocated at admission, for the whole prompt) and its `num_computed_tokens` where its last
chunk stopped; the step that computes its last chunk samples its first token and moves it to
`running`.
"""

from __future__ import annotations

from collections import deque

from glassbox.engine.block_manager import BlockManager
from glassbox.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefill_chunk_tokens: int | None = None,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # A chunk larger than a whole prefill step is a whole prefill step (chunking off).
        self.prefill_chunk_tokens = min(
            prefill_chunk_tokens or max_num_batched_tokens, max_num_batched_tokens
        )
        self.waiting: deque[Sequence] = deque()
        self.prefilling: deque[Sequence] = deque()  # admitted, prompt partly computed
        self.running: deque[Sequence] = deque()  # decoding
        self._decode_next = False  # the last step was a prefill: the running ones go next

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences to run this step and whether the step is a prefill. A prefill row
        computes `seq.num_scheduled_tokens` tokens from `seq.num_computed_tokens` on."""
        if not (self.running and self._decode_next):
            budget = self.prefill_chunk_tokens if self.running else self.max_num_batched_tokens
            scheduled = self._schedule_prefill(budget)
            if scheduled:
                self._decode_next = True
                return scheduled, True
        self._decode_next = False
        self._admit_continued_states()
        return self._schedule_decode(), False

    def _schedule_prefill(self, budget: int) -> list[Sequence]:
        """Up to `budget` prompt tokens: the next chunks of the prompts already started
        (oldest first), then new prompts, the last of them possibly cut short."""
        scheduled: list[Sequence] = []
        tokens = 0
        for seq in self.prefilling:
            if tokens == budget:
                break
            tokens += self._chunk(seq, budget - tokens)
            scheduled.append(seq)
        while (
            self.waiting
            and tokens < budget
            and len(self.running) + len(self.prefilling) < self.max_num_seqs
        ):
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self._admit()
            if len(seq) - seq.num_computed_tokens == 1:
                # Only its last token to compute (a KV state continued): that is a decode
                # step, so it joins the decode batch, and its kernels, instead of a prefill.
                self.running.append(seq)
                continue
            self.prefilling.append(seq)
            tokens += self._chunk(seq, budget - tokens)
            scheduled.append(seq)
        for seq in scheduled:
            if seq.chunk_end == len(seq):  # this step samples its next token: it decodes next
                self.prefilling.remove(seq)
                self.running.append(seq)
        return scheduled

    def _admit_continued_states(self) -> None:
        """KV states continued with nothing new but their last token (its KV is what the
        decode step computes) join the decode batch from the head of the queue: a row of
        the decode step, not a prefill chunk."""
        while self.waiting and len(self.running) + len(self.prefilling) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.prefix is None or seq.prefix.num_kv != len(seq) - 1:
                break
            if not self.block_manager.can_allocate(seq):
                break
            self.running.append(self._admit())

    def _admit(self) -> Sequence:
        """The head of the queue gets blocks for all its tokens (registered in the prefix
        cache only once a step computes them: see `_chunk`)."""
        seq = self.waiting.popleft()
        self.block_manager.allocate(seq, register=False)
        seq.status = SequenceStatus.RUNNING
        return seq

    def _chunk(self, seq: Sequence, room: int) -> int:
        n = min(len(seq) - seq.num_computed_tokens, room)
        seq.num_scheduled_tokens = n
        self.block_manager.register_computed(seq, seq.chunk_end)
        return n

    def _schedule_decode(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        while self.running:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.prefilling:  # first those half way through a prompt: no stream yet
                    self.preempt(self.prefilling.pop())
                elif self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.may_append(seq)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled

    def preempt(self, seq: Sequence) -> None:
        """Out of blocks: give this sequence's back; it is recomputed from its first token
        (prefix cache hits aside) when it runs again, whether it was decoding or half way
        through its prompt."""
        seq.status = SequenceStatus.WAITING
        seq.num_scheduled_tokens = None
        self.block_manager.free_sequence(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.num_scheduled_tokens = None
        self.block_manager.free_sequence(seq)
        if seq.prefix is not None:
            self.block_manager.release(seq.prefix)
            seq.prefix = None
        for queue in (self.running, self.prefilling, self.waiting):
            if seq in queue:
                queue.remove(seq)
                break
