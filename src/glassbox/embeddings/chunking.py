"""Token-aware chunks with overlap: semchunk, counting tokens with the embedding model's own
tokenizer, so that a chunk is never cut short by the model (its max_seq_length).

semchunk splits at the most meaningful boundary it finds (blank lines, newlines, sentence
ends, clauses, words, characters as a last resort) and merges pieces up to the budget. Its
offsets give each chunk's place in the text (`text[start:end] == chunk`); only whitespace
between chunks is left out, so the chunks cover every other character of the text.

Overlap, as semchunk builds it: the text is cut into pieces of at most
min(overlap, max_tokens - overlap) tokens, and a chunk is as many consecutive pieces as fit
in max_tokens by count, the next chunk starting after max_tokens - overlap tokens' worth of
pieces. So consecutive chunks always share at least one whole piece (overlap > 0), and with
overlap <= max_tokens / 2 they share exactly one piece, of at most `overlap` tokens.

A chunk made of several pieces is not counted again by semchunk, and WordPiece counts do not
always add up across a join ("jeffrey" and "printers" are a token each, "jeffreyprinters"
three): a text of run-together words can give a chunk over the budget. So each chunk is
counted here, and when one is over, the text is chunked again with a slightly smaller size
(and the overlap kept within its bounds): every chunk is within `max_tokens`, always, and
the properties above still hold, since the chunks are semchunk's own.

A piece is never smaller than one character, and one character can be several tokens (a
Hangul syllable is 3 for all-MiniLM-L6-v2's WordPiece, which spells it in jamo). semchunk
asked for pieces narrower than the text's widest character splits that character for ever
(a RecursionError): so the piece size is at least that width. An overlap narrower than the
widest character is widened to it (two chunks then share that character's tokens where
fewer were asked: the least they can share), and one leaving less than it beside the
overlap is narrowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import semchunk

from glassbox.errors import InvalidRequest

MIN_TOKENS = 16  # below this a chunk is a few words: useless for retrieval, and costly


@dataclass(frozen=True)
class ChunkingOptions:
    """Tokens per chunk and tokens shared by consecutive chunks (validated on creation)."""

    max_tokens: int
    overlap_tokens: int

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_TOKENS:
            raise InvalidRequest(
                f"'max_tokens' must be at least {MIN_TOKENS}, got {self.max_tokens}",
                param="chunking.max_tokens",
            )
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InvalidRequest(
                f"'overlap_tokens' must be from 0 to max_tokens - 1 ({self.max_tokens - 1}), "
                f"got {self.overlap_tokens}",
                param="chunking.overlap_tokens",
            )

    @classmethod
    def default(cls, budget: int) -> ChunkingOptions:
        """The whole budget per chunk, a quarter of it shared."""
        return cls(budget, budget // 4)


@dataclass(frozen=True)
class Chunk:
    """`text == document[start:end]` (character offsets)."""

    text: str
    start: int
    end: int


class Chunker:
    """Chunks texts with one tokenizer (a Hugging Face tokenizer). Thread-safe: it keeps no
    state between calls. semchunk counts the same spans again and again, so each call counts
    through a cache of its own (semchunk's memoization is off: its cache is process-global
    and would keep every text ever chunked)."""

    def __init__(self, tokenizer: Any, model_max_tokens: int):
        """`model_max_tokens`: the model's max_seq_length, special tokens included."""
        self._tokenizer = tokenizer
        self.budget = model_max_tokens - len(tokenizer.encode(""))  # [CLS] and [SEP]
        # semchunk counts only a prefix of a long text when that prefix is over the budget
        # already; it needs the longest token's length in characters for that.
        self._max_token_chars = max(len(t) for t in tokenizer.get_vocab())

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model reads it, special tokens left out."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def check(self, options: ChunkingOptions) -> None:
        """Refuse chunks longer than the model reads (their end would be cut off)."""
        if options.max_tokens > self.budget:
            raise InvalidRequest(
                f"'max_tokens' must be at most {self.budget} for this model (it reads "
                f"{self.budget} tokens besides its special ones), got {options.max_tokens}",
                param="chunking.max_tokens",
            )

    def chunk(self, text: str, options: ChunkingOptions) -> list[Chunk]:
        """The chunks of `text`, in order (none for a text of whitespace only)."""
        self.check(options)
        count = lru_cache(maxsize=4096)(self.count_tokens)
        widest = max((count(c) for c in set(text)), default=1)
        size = options.max_tokens
        half = 2 * options.overlap_tokens <= options.max_tokens
        overlap = options.overlap_tokens
        while True:
            split = self._semchunk(count, size)
            overlap = _piece_overlap(overlap, size, widest)
            pieces, offsets = split(text, offsets=True, overlap=overlap or None)
            if all(count(p) <= options.max_tokens for p in pieces):
                return [Chunk(p, s, e) for p, (s, e) in zip(pieces, offsets, strict=True)]
            # A join took more tokens than its pieces: all of the text again, a little
            # smaller, so that semchunk's own guarantees (cover, overlap) still hold. Down at
            # the widest character and no overlap, semchunk counts every chunk it makes:
            # this ends.
            size = max(widest, size - max(1, size // 16))
            overlap = min(options.overlap_tokens, size // 2 if half else size - 1)

    def count(self, texts: list[str], options: ChunkingOptions) -> int:
        """How many chunks the texts make (what a job will embed and store)."""
        return sum(len(self.chunk(text, options)) for text in texts)

    def _semchunk(self, count: Callable[[str], int], max_tokens: int) -> Callable[..., Any]:
        return semchunk.chunkerify(
            count, max_tokens, max_token_chars=self._max_token_chars, memoize=False
        )


def _piece_overlap(overlap: int, size: int, widest: int) -> int:
    """The overlap to ask semchunk for, so that its pieces (min(overlap, size - overlap)
    tokens) hold the widest character: `overlap` widened to `widest` where it is narrower,
    and narrowed where it leaves less than `widest` beside it; none where `size` cannot hold
    two such characters."""
    if overlap == 0:
        return 0
    if size < 2 * widest:
        return 0
    return min(max(overlap, widest), size - widest)
