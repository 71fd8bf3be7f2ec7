"""Domain errors: what went wrong with a request, said without HTTP.

The engine, the request path and every service raise these; only the HTTP layer
(glassbox.api.errors) turns them into status codes and OpenAI's error shape, with one table
from error class to status. A worker, a chat session or the CLI that calls a service gets
these same errors and can say what went wrong in its own way.

Each error carries a message that says what to fix, the request field at fault (`param`)
when there is one, and a machine-readable `code` (OpenAI's, where OpenAI has one).
"""

from __future__ import annotations


class GlassboxError(Exception):
    """Base of every domain error. `code` defaults to the class's `default_code`."""

    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(GlassboxError):
    """The request cannot be served as sent: a value out of range, a bad combination."""


class Unsupported(InvalidRequest):
    """A field that would change the output and that glassbox cannot honour (yet)."""

    default_code = "unsupported_parameter"

    def __init__(self, param: str, what: str | None = None):
        detail = f": {what}" if what else ""
        super().__init__(
            f"'{param}' is not supported yet{detail}; remove it from the request", param=param
        )


class NotCapable(InvalidRequest):
    """The model's backend cannot do what the request asks (steering on an upstream, say)."""

    default_code = "unsupported_capability"


class ContextLengthExceeded(InvalidRequest):
    """The prompt, or the prompt plus the tokens asked for, does not fit the context."""

    default_code = "context_length_exceeded"


class TooLarge(InvalidRequest):
    """A body or file larger than anything this server can use."""


class LimitReached(InvalidRequest):
    """The caller already keeps as many objects of a kind (states, files) as the server allows
    one tenant: delete some first. A 400, not a 429: waiting does not make room."""

    default_code = "limit_reached"


class NotFound(GlassboxError):
    """No `kind` with this id (for this owner: another owner's object is not found
    either). `code` is `<kind>_not_found`."""

    def __init__(
        self,
        kind: str,
        id: str,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(
            message or f"No {kind} with id '{id}'",
            param=param,
            code=code or f"{kind.replace(' ', '_')}_not_found",
        )
        self.kind = kind
        self.id = id


class ModelNotFound(NotFound):
    """A model name this server does not serve (OpenAI reports it as an invalid request)."""

    def __init__(self, name: str, message: str, *, param: str = "model"):
        super().__init__("model", name, message, param=param)


class Unauthenticated(GlassboxError):
    """No API key, or one that is unknown, expired or revoked, where the server requires keys.
    The message never echoes the key."""

    default_code = "invalid_api_key"


class Forbidden(GlassboxError):
    """A valid key whose scopes do not allow this request (a read-only key on a POST, a
    non-admin key on an admin route). Another tenant's object is a NotFound, never this."""

    default_code = "insufficient_scope"


class Conflict(GlassboxError):
    """The object exists already, or is in a state that forbids the change."""


class Aborted(GlassboxError):
    """Generation was stopped by the request's own rule: a variant's abort_when scope
    (`scope`: its index in the steering plan)."""

    default_code = "inference_aborted"

    def __init__(self, message: str, *, scope: int | None = None, param: str | None = None):
        super().__init__(message, param=param)
        self.scope = scope


class Unavailable(GlassboxError):
    """The server cannot serve this now, through no fault of the request: the engine has
    stopped, or has no room (KV blocks) for it at the moment. Retrying later may work."""


class Overloaded(Unavailable):
    """Too much work is waiting already (the engine's queue is full): the request is refused
    at once rather than left to wait in a queue it would time out in. `retry_after`: seconds
    after which a retry may be admitted (the HTTP layer sends it as Retry-After)."""

    default_code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class GenerationTimeout(Unavailable):
    """A generation ran past the server's time limit (GLASSBOX_GENERATION_TIMEOUT_SECONDS,
    counted from submission, queueing included): its sequence was aborted."""

    default_code = "generation_timeout"


class RateLimited(GlassboxError):
    """The caller has used its allowance for now (requests or tokens per minute).
    `retry_after`: seconds until the allowance has room again (sent as Retry-After)."""

    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidOutput(GlassboxError):
    """The model's answer is not what was asked for (JSON that does not validate against the
    schema or Pydantic model, a tool call with arguments outside its tool's parameters), after
    every attempt allowed. `attempts`: how many answers were tried; `output`: the last one."""

    default_code = "invalid_model_output"

    def __init__(self, message: str, *, attempts: int = 1, output: str = ""):
        super().__init__(message)
        self.attempts = attempts
        self.output = output


class DiskFull(Unavailable):
    """The server's disk has no room for a file the request must write (an exported state):
    nothing was written, and the same request succeeds once space has been freed. A 507
    (Insufficient Storage), not a 500: the request is fine and the server is not broken."""

    default_code = "insufficient_storage"
