"""Incremental detokenization with stop strings.

Text is released only once it is final: a token that ends inside a multi-byte character waits
for the rest, and the tail of the text that could still become a stop string is held back.
So a stop string is never emitted and never split across stream chunks. NUL comes out as
U+FFFD.
"""

from __future__ import annotations

from typing import Protocol

# Prompt tokens decoded alongside the output, so tokenizers that mark word starts on the
# token itself (SentencePiece) render the first output token's leading space correctly.
_CONTEXT_TOKENS = 4


def without_nul(generated: str) -> str:
    """Generated text as glassbox hands it out: NUL as U+FFFD. A byte-level vocabulary can
    spell NUL, replaced like any byte that is not text: the server refuses NUL in a request
    body (PostgreSQL cannot store it), so a reply holding one could be neither kept in a
    session nor sent back in the next request."""
    return generated.replace("\x00", "\ufffd")


class Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Decoder,
        prompt_ids: list[int],
        stop: list[str],
        skip_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.stop = [s for s in stop if s]
        self.ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # all final output text so far (stop string excluded once found)
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token_id: int) -> None:
        """Add one generated token; `stopped` turns true when a stop string appears."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return  # an incomplete character: wait for the next token
        before = len(self.text)
        self.text += without_nul(full[len(prefix) :])
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        if self.stop:
            start = max(0, before - max(len(s) for s in self.stop) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True

    def take(self, final: bool = False) -> str:
        """The text that is safe to hand out now (all of it when the sequence is done)."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that starts some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
