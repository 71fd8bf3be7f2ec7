r"""Grammar-constrained rows: what the engine needs of a grammar, and the token masks.

The engine knows grammars only through these two protocols (glassbox.structured implements
them with llguidance): a `Grammar` is compiled once and shared by every sequence that uses it
(the n choices of a request, every request with the same schema); each sequence gets its own
`GrammarMatcher` from it, which follows the tokens that sequence generates.

Per step, the masks of the constrained rows are filled into one int32 bitmask
[rows, ceil(vocab / 32)] (bit j of word w allows token 32 w + j) and turned into token-id
lists on a worker thread while the forward pass runs (`MaskFiller`), then applied to the
logits before sampling:

    step:  schedule --> forward pass (engine thread) -----------> sample -> consume tokens
                    \-> fill masks (glassbox-grammar thread) --/

Filling a mask is the grammar library's native code, which releases the GIL; the thread
runs numpy and no torch op (the one-thread rule for torch, see async_engine.py, holds).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
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


@dataclass(frozen=True)
class RowMask:
    """One row's mask as token ids: the only tokens allowed (`allowed`), or the tokens
    forbidden, whichever list is shorter."""

    ids: np.ndarray  # int64
    allowed: bool


def row_masks(bitmask: np.ndarray, vocab_size: int) -> list[RowMask]:
    """The rows of an int32 bitmask [rows, words] as token-id lists (numpy only: this runs on
    the grammar thread). Only the words that are neither all 0 nor all 1 are unpacked: a
    grammar's mask is mostly one or the other. Bit j of word w is bit j % 8 of byte
    4w + j // 8 (little-endian), token 32 w + j."""
    offsets = np.arange(32)
    masks = []
    for words in bitmask:
        full = words == -1
        allowed = np.count_nonzero(full) * 2 <= len(words)  # list the allowed, else forbidden
        index = np.flatnonzero(words if allowed else ~full)
        bits = np.unpackbits(words[index].view(np.uint8), bitorder="little").reshape(-1, 32)
        ids = (index[:, None] * 32 + offsets)[bits == (1 if allowed else 0)]
        masks.append(RowMask(ids[ids < vocab_size].astype(np.int64), allowed))
    return masks


def apply_masks(logits: torch.Tensor, masks: list[RowMask], rows: list[int]) -> None:
    """Set to -inf, in place, the logits of the tokens that masks[k] forbids in logits row
    rows[k].

    By ids rather than over the whole vocabulary: a JSON grammar allows 3 tokens at the median
    position (structure, enums) and forbids few inside a string, and a masked_fill over
    49,152 logits per row cost 0.9 ms a step for 8 constrained rows (benchmarks/structured.py);
    short id lists cost a few index ops."""
    for mask, r in zip(masks, rows, strict=True):
        row = logits[r]
        ids = torch.from_numpy(mask.ids)
        if mask.allowed:
            kept = row[ids]
            row.fill_(float("-inf"))
            row[ids] = kept
        else:
            row[ids] = float("-inf")


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
        self.vocab_size = vocab_size
        self.words = bitmask_words(vocab_size)
        self.times = MaskTimes()
        self._pool: ThreadPoolExecutor | None = None

    def start(self, matchers: list[GrammarMatcher]) -> Future[list[RowMask]] | None:
        if not matchers:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="glassbox-grammar")
        return self._pool.submit(self._fill, matchers)

    def _fill(self, matchers: list[GrammarMatcher]) -> list[RowMask]:
        t0 = time.perf_counter()
        bitmask = np.zeros((len(matchers), self.words), dtype=np.int32)
        address, row_bytes = bitmask.ctypes.data, self.words * 4
        for row, matcher in enumerate(matchers):
            matcher.fill_bitmask(address + row * row_bytes, row_bytes)
        masks = row_masks(bitmask, self.vocab_size)
        self.times.fill_seconds += time.perf_counter() - t0
        self.times.masks += len(matchers)
        return masks

    def result(self, pending: Future[list[RowMask]]) -> list[RowMask]:
        t0 = time.perf_counter()
        masks = pending.result()
        self.times.wait_seconds += time.perf_counter() - t0
        return masks
