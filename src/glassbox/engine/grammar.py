r"""Grammar-constrained rows: what the engine needs of a grammar, and the token masks.

The engine knows grammars only through these two protocols (glassbox.structured implements
them with llguidance): a `Grammar` is compiled once and shared by every sequence that uses it
(the n choices of a request, every request with the same schema); each sequence gets its own
`GrammarMatcher` from it, which follows the tokens that sequence generates.

Per step, the masks of the constrained rows are filled into one int32 bitmask
[rows, ceil(vocab / 32)] (bit j of word w allows token 32 w + j) on a worker thread while
the forward pass runs (`MaskFiller`), then applied to the logits before sampling:

    step:  schedule --> forward pass (engine thread) -----------> sample -> consume tokens
                    \-> fill masks (glassbox-grammar thread) --/

Filling a mask is the grammar library's native code, which releases the GIL, and touches
no torch op (the one-thread rule for torch, see async_engine.py, holds).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

# finish_reason of a sequence whose matcher failed (no token its grammar allows was left, or
# the grammar hit a limit of the library): it never ends as a silently truncated answer.
GRAMMAR_FAILED = "grammar_failed"


class GrammarMatcher(Protocol):
    """One sequence's position in its grammar."""

    def fill_bitmask(self, address: int, nbytes: int) -> None:
        """Write the tokens allowed next as a bitmask of `nbytes` bytes at `address` (one
        row of the int32 bitmask; raw memory, so that no torch op runs on the grammar
        thread)."""

    def consume(self, token_id: int) -> bool:
        """Advance over a generated token; False when the grammar does not allow it."""

    def is_stopped(self) -> bool:
        """The grammar is complete and nothing may follow: the sequence ends here."""

    def error(self) -> str | None:
        """Why the matcher failed, or None."""


class Grammar(Protocol):
    def matcher(self) -> GrammarMatcher:
        """A new matcher at the grammar's start."""


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, the logits of the tokens that bitmask row k forbids in logits
    row rows[k]."""
    vocab = logits.shape[-1]
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).flatten(1)[:, :vocab].bool()
    index = torch.tensor(rows, dtype=torch.long)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


@dataclass
class MaskTimes:
    """Where the masks' time went: filling them (on the grammar thread) and waiting for
    them after the forward pass (the part not hidden behind it)."""

    masks: int = 0
    fill_seconds: float = 0.0
    wait_seconds: float = 0.0


class MaskFiller:
    """Fills the constrained rows' masks on a thread of its own, overlapped with the forward
    pass; `start` before running the model, `result` before sampling."""

    def __init__(self, vocab_size: int):
        self.words = bitmask_words(vocab_size)
        self.times = MaskTimes()
        self._pool: ThreadPoolExecutor | None = None

    def start(self, matchers: list[GrammarMatcher]) -> Future[torch.Tensor] | None:
        if not matchers:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="glassbox-grammar")
        bitmask = torch.zeros(len(matchers), self.words, dtype=torch.int32)
        return self._pool.submit(self._fill, matchers, bitmask, bitmask.data_ptr())

    def _fill(
        self, matchers: list[GrammarMatcher], bitmask: torch.Tensor, address: int
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        row_bytes = self.words * 4
        for row, matcher in enumerate(matchers):
            matcher.fill_bitmask(address + row * row_bytes, row_bytes)
        self.times.fill_seconds += time.perf_counter() - t0
        self.times.masks += len(matchers)
        return bitmask

    def result(self, pending: Future[torch.Tensor]) -> torch.Tensor:
        t0 = time.perf_counter()
        bitmask = pending.result()
        self.times.wait_seconds += time.perf_counter() - t0
        return bitmask
