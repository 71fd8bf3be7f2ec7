"""What the engine refuses, as domain errors (glassbox.errors): never a bare ValueError or
MemoryError for a request's fault, so callers need no translation of their own."""

from __future__ import annotations

from glassbox.errors import ContextLengthExceeded, InvalidRequest, Unavailable


class RequestRejected(InvalidRequest):
    """The engine cannot run this request as given (an empty prompt, a token id outside the
    vocabulary, a parameter out of range, KV of the wrong shape)."""


class PromptTooLong(ContextLengthExceeded):
    """The prompt fills the model's context."""


class OutOfBlocks(Unavailable):
    """The KV pool has no room for this now; it may have once running requests finish."""

    default_code = "kv_cache_full"

    def __init__(self, message: str):
        super().__init__(f"{message}; try again when running requests have finished")


class EngineDeadError(Unavailable):
    """The engine thread has stopped."""

    default_code = "engine_dead"
