"""Per-key rate limits and back-pressure: one app-wide dependency, run after authentication.

Rate limits (the `limits` library) count requests and tokens per minute for each API key (the
local tenant when keys are off), in memory or, with GLASSBOX_REDIS_URL, in Redis so that every
process on it shares the counts. A key's limits are its own where it was made with them, else
its tenant's entry in `rate_limit_tenants`, else the server's defaults.
The strategy is the fixed window: one counter per key and minute, raised atomically by a
request's cost (INCRBY in Redis), so a tokens limit costs O(1) storage and its Retry-After is
exact (the window's end). A moving window would store one entry per token counted. The price:
a client can spend up to twice its limit across the boundary of two windows.

Tokens are counted before the request runs, as OpenAI counts them: the text in the body
(about 4 characters a token; token ids count one each) plus the completion budget
(`max_tokens` x `n`). Counting the generated tokens afterwards would let one client start any
number of requests while its window still looks empty, and would not see streams until they
end; the estimate refuses the request before it costs anything, on every backend.

Back-pressure: when the engine's waiting queue holds `max_waiting` sequences, new generation
requests get a 503 with Retry-After instead of joining a queue they would time out in.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError

from glassbox.api.deps import current_principal
from glassbox.config import Settings
from glassbox.errors import Overloaded, RateLimited
from glassbox.logs import get_logger
from glassbox.metrics import Metrics
from glassbox.principal import Principal

log = get_logger(__name__)

CHARS_PER_TOKEN = 4
_BUDGET_FIELDS = ("max_completion_tokens", "max_tokens", "max_new_tokens")

# The routes whose requests queue sequences on the engine (POST): refused when it is full.
GENERATION_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/api/inference/v1/chat/completions",
        "/llm/chat/",
        "/llm/chat/{session_id}/message/",
        "/generate/token",
        "/generate/beam",
        "/tasks/classify",
        "/tasks/extract",
        "/tasks/answer",
        "/tasks/summarize",
    }
)
OVERLOADED_RETRY_AFTER = 1  # seconds: a queue drains in steps of milliseconds


def _text_tokens(value: Any) -> int:
    """Estimated tokens of every string in a JSON value; token ids in lists count one each."""
    if isinstance(value, str):
        return math.ceil(len(value) / CHARS_PER_TOKEN)
    if isinstance(value, dict):
        return sum(_text_tokens(v) for v in value.values())
    if isinstance(value, list):
        return sum(
            1 if isinstance(v, int) and not isinstance(v, bool) else _text_tokens(v) for v in value
        )
    return 0


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def estimated_tokens(body: Any) -> int:
    """The tokens a request may cost: its text plus its completion budget (`max_tokens` or
    its aliases, times `n` or `best_of`). Without a budget only the text counts."""
    if not isinstance(body, dict):
        return _text_tokens(body)
    budget = next((_count(body, f) for f in _BUDGET_FIELDS if _count(body, f)), 0)
    choices = max(1, _count(body, "n"), _count(body, "best_of"))
    return _text_tokens(body) + budget * choices


class RateLimits:
    """Requests and tokens per minute per API key. A limit of 0 is no limit. When Redis cannot
    be reached the request is let through (and logged): a limiter should not take the server
    down with it."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self._defaults = (settings.rate_limit_requests, settings.rate_limit_tokens)
        self._tenants = settings.rate_limit_tenants
        self._metrics = metrics
        self._pool: aioredis.ConnectionPool | None = None
        storage: Storage
        if settings.redis_url:
            self._pool = aioredis.ConnectionPool.from_url(
                settings.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="glassbox-limits",
                connection_pool=self._pool,
            )
        else:
            storage = MemoryStorage()
        self._limiter = FixedWindowRateLimiter(storage)

    def _items(self, caller: Principal) -> tuple[RateLimitItem | None, RateLimitItem | None]:
        requests, tokens = self._defaults
        override = self._tenants.get(caller.tenant)
        if override is not None:
            requests = override.requests if override.requests is not None else requests
            tokens = override.tokens if override.tokens is not None else tokens
        own = caller.limits
        requests = own.requests if own.requests is not None else requests
        tokens = own.tokens if own.tokens is not None else tokens
        return (
            RateLimitItemPerMinute(requests, namespace="requests") if requests else None,
            RateLimitItemPerMinute(tokens, namespace="tokens") if tokens else None,
        )

    def limited(self, caller: Principal) -> bool:
        """Whether any limit applies to `caller` (without one, a request costs nothing)."""
        return any(item is not None for item in self._items(caller))

    async def check(self, caller: Principal, tokens: int) -> None:
        """Count one request of `tokens` for the caller's key, or raise RateLimited (and count
        nothing of the tokens) when either limit would be passed."""
        by_requests, by_tokens = self._items(caller)
        # A key's counters are its own; without keys, the (one) tenant's.
        who = caller.key_id or f"tenant:{caller.tenant}"
        try:
            if by_tokens is not None and not await self._limiter.test(by_tokens, who, cost=tokens):
                await self._refuse(by_tokens, who, tokens)
            if by_requests is not None and not await self._limiter.hit(by_requests, who):
                await self._refuse(by_requests, who, tokens)
            if by_tokens is not None and not await self._limiter.hit(by_tokens, who, cost=tokens):
                await self._refuse(by_tokens, who, tokens)
        except StorageError as exc:
            log.warning("rate limit storage unavailable; request let through", error=str(exc))

    async def _refuse(self, item: RateLimitItem, who: str, tokens: int) -> None:
        kind = item.namespace
        self._metrics.rate_limited.labels(kind=kind).inc()
        reset_at = (await self._limiter.get_window_stats(item, who)).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        if kind == "tokens" and tokens > item.amount:
            message = (
                f"this request may cost about {tokens} tokens, more than the {item.amount} "
                "tokens per minute this API key may use; lower max_tokens or send less text"
            )
        else:
            message = (
                f"rate limit reached: {item.amount} {kind} per minute for this API key; "
                f"retry in {retry_after} s"
            )
        raise RateLimited(message, retry_after=retry_after)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()


async def enforce_limits(request: Request) -> None:
    """The app-wide dependency after `require_key`: the caller's key's rate limits, then
    back-pressure for generation routes. Probes and scrapes (/health, /metrics) are not
    counted: they would eat the budget of the tenant they run as."""
    path = request.url.path
    if path == "/metrics" or path == "/health" or path.startswith("/health/"):
        return
    settings: Settings = request.app.state.settings
    principal = await current_principal(request)
    limits: RateLimits = request.app.state.limits
    if limits.limited(principal):  # the body is read and estimated only then
        body = await _json_body(request)
        await limits.check(principal, estimated_tokens(body))
    if request.method == "POST" and _route_path(request) in GENERATION_ROUTES:
        waiting = request.app.state.generation.stats().get("waiting", 0)
        if waiting >= settings.max_waiting:
            request.app.state.metrics.rate_limited.labels(kind="overloaded").inc()
            raise Overloaded(
                f"the server is busy: {waiting} sequences are waiting for the model "
                f"(at most {settings.max_waiting}); retry shortly",
                retry_after=OVERLOADED_RETRY_AFTER,
            )


async def _json_body(request: Request) -> Any:
    """The request's JSON body (already read and cached by FastAPI), or None."""
    if request.method != "POST" or "json" not in request.headers.get("content-type", ""):
        return None
    try:
        return await request.json()
    except ValueError:  # the route answers the 400
        return None


def _route_path(request: Request) -> str | None:
    return getattr(request.scope.get("route"), "path", None)
