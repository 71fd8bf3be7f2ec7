"""Where embeddings come from: providers (the local model, any OpenAI-compatible remote), a
circuit breaker per provider, and the fallback chain that tries them in order.

Failures, as the reference (tldw_server) handles them:

- A remote is asked through one pooled httpx client. A transport failure (refused connection,
  timeout, broken connection) or an answer of 408, 429, 502, 503 or 504 is retried `retries`
  times after `backoff` seconds doubled each time (or the remote's `Retry-After`, up to
  `MAX_RETRY_AFTER`): embedding is idempotent, so asking again is always safe.
- Any other failure (another 5xx, 401/403/404: the remote is misconfigured; an answer that is
  not a well-formed embeddings response) is a `ProviderError` at once.
- 400, 413 and 422 are the request's fault (input too long, say): every provider would refuse
  it, so the chain raises it to the caller as `InvalidRequest` instead of trying the next, and
  the provider's breaker does not count it as a failure.
- Each provider's `CircuitBreaker` opens after repeated failures, so that a dead provider
  costs a request nothing (no connect, no retries) until it is probed again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from glassbox.errors import InvalidRequest, ModelNotFound, Unavailable
from glassbox.logs import get_logger
from glassbox.remote import (
    CLIENT_FAULT,
    MAX_RETRY_AFTER,
    RETRY_STATUS,
    Retry,
    describe,
    error_field,
    error_message,
    pooled_client,
    retry_after,
)

log = get_logger(__name__)


class ProviderError(Unavailable):
    """A provider could not give embeddings: unreachable, failing, or a malformed answer."""

    default_code = "embedding_provider_failed"


class CircuitOpen(Unavailable):
    """A provider's circuit is open: it failed repeatedly and is not asked until its probe."""

    default_code = "circuit_open"


@dataclass(frozen=True)
class ProviderResult:
    vectors: np.ndarray  # float32 (n, d), one row per text, in the texts' order
    prompt_tokens: int


class EmbeddingProvider(Protocol):
    name: str

    def serves(self, model: str) -> bool:
        """Whether this provider can embed with `model` (the client's name for it)."""
        ...

    async def embed(self, texts: list[str], model: str) -> ProviderResult: ...


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures; open refuses every call
    at once (`CircuitOpen`) for `recovery_seconds`; then half-open lets exactly one probe call
    through (others are refused while it runs): its success closes the circuit, its failure
    opens it again for another `recovery_seconds`.

    Only the probe decides a half-open circuit: a call admitted before the circuit opened and
    ending later changes the totals, not the state. Used from one event loop (no lock).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self.clock = clock
        self.failures = 0  # consecutive
        self.total_failures = 0
        self.total_rejections = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at < self.recovery_seconds:
            return "open"
        return "half_open"

    @contextmanager
    def guard(self, exempt: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Run the block as one call through the breaker: refused with `CircuitOpen` when the
        circuit does not admit it; a normal exit is a success, an `Exception` a failure. An
        exception of an `exempt` type means the provider answered (it refused the input) and
        counts as a success. Cancellation is no verdict: a cancelled probe frees its slot."""
        probe = self._admit()
        try:
            yield
        except exempt:
            self._succeeded(probe)
            raise
        except Exception:
            self._failed(probe)
            raise
        except BaseException:
            if probe:
                self._probing = False
            raise
        self._succeeded(probe)

    def snapshot(self) -> dict[str, Any]:
        """For /health and /metrics."""
        opened = None if self._opened_at is None else self.clock() - self._opened_at
        return {
            "state": self.state,
            "failures": self.failures,
            "opened_seconds_ago": opened,
            "total_failures": self.total_failures,
            "total_rejections": self.total_rejections,
        }

    def _admit(self) -> bool:
        """Whether the call is the half-open probe; `CircuitOpen` if it may not run."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        self.total_rejections += 1
        if state == "open":
            wait = self.recovery_seconds - (self.clock() - self._opened_at)
            raise CircuitOpen(f"circuit open, next probe in {wait:.1f} s")
        raise CircuitOpen("circuit half-open, its probe is running")

    def _succeeded(self, probe: bool) -> None:
        if probe:
            self._probing = False
            self._opened_at = None
            self.failures = 0
        elif self._opened_at is None:
            self.failures = 0

    def _failed(self, probe: bool) -> None:
        self.total_failures += 1
        if probe:
            self._probing = False
            self._opened_at = self.clock()
        elif self._opened_at is None:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._opened_at = self.clock()


class ProviderChain:
    """The providers of a model, tried in order (GLASSBOX_EMBEDDINGS_FALLBACK): each one that
    serves the model and whose circuit admits the call, until one answers."""

    def __init__(
        self,
        providers: Sequence[EmbeddingProvider],
        breakers: Mapping[str, CircuitBreaker] | None = None,
    ):
        """`providers` in the order they are tried; `breakers` by provider name (a provider
        without one gets a `CircuitBreaker()` with the defaults)."""
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        self.providers = list(providers)
        self.breakers = {n: (breakers or {}).get(n) or CircuitBreaker() for n in names}

    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        available: Mapping[str, EmbeddingProvider],
        breakers: Mapping[str, CircuitBreaker] | None = None,
    ) -> ProviderChain:
        """The chain of the providers `names` (a setting's list), in that order."""
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(f"unknown embedding providers {unknown}; known: {sorted(available)}")
        return cls([available[n] for n in names], breakers)

    async def embed(self, texts: list[str], model: str) -> tuple[ProviderResult, str]:
        """The first answer and the name of the provider that gave it. `InvalidRequest` from a
        provider (the input's fault) is raised at once; `Unavailable` when none answered,
        saying why for each; `ModelNotFound` when no provider serves `model`."""
        candidates = [p for p in self.providers if p.serves(model)]
        if not candidates:
            raise ModelNotFound(model, f"no embedding provider serves the model '{model}'")
        reasons = []
        for provider in candidates:
            try:
                with self.breakers[provider.name].guard(exempt=(InvalidRequest,)):
                    result = await provider.embed(texts, model)
            except InvalidRequest:
                raise
            except CircuitOpen as exc:
                reasons.append(f"{provider.name}: {exc.message}")
                continue
            except Exception as exc:
                log.warning("embedding provider failed", provider=provider.name, error=str(exc))
                reasons.append(f"{provider.name}: {describe(exc)}")
                continue
            return result, provider.name
        raise Unavailable(
            f"no embedding provider could serve the model '{model}': " + "; ".join(reasons),
            code="embedding_unavailable",
        )

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: breaker.snapshot() for name, breaker in self.breakers.items()}


class RemoteProvider:
    """Any OpenAI-compatible `POST /embeddings` (OpenAI, vLLM, TEI, Infinity, llama.cpp's
    server, another glassbox)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        model_map: Mapping[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.25,
        max_connections: int = 32,
        client: httpx.AsyncClient | None = None,
    ):
        """`base_url` as the `openai` package takes it ("http://host:8000/v1"); `model_map`,
        the client's model names -> the remote's (None: any name, sent as it is). A `client`
        passed in (for its transport or hooks) is not closed by `aclose`; otherwise one pooled
        client of at most `max_connections` serves every request."""
        self.name = name
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model_map = dict(model_map) if model_map is not None else None
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.backoff = backoff
        self._owns_client = client is None
        self.client = client or pooled_client(timeout, connect_timeout, max_connections)

    def serves(self, model: str) -> bool:
        return self.model_map is None or model in self.model_map

    async def embed(self, texts: list[str], model: str) -> ProviderResult:
        remote_model = model if self.model_map is None else self.model_map[model]
        body = {"model": remote_model, "input": texts, "encoding_format": "float"}
        delay, attempt = self.backoff, 0
        while True:
            try:
                return self._parse(await self._once(body), len(texts))
            except Retry as failure:
                wait = delay if failure.delay is None else failure.delay
                if attempt == self.retries or wait > MAX_RETRY_AFTER:
                    tries = f"after {attempt + 1} attempts" if attempt else "not retried"
                    raise ProviderError(f"{self.url}: {failure.reason} ({tries})") from None
                log.info("embedding provider retry", provider=self.name, reason=failure.reason)
                await asyncio.sleep(wait)
                delay, attempt = delay * 2, attempt + 1

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def _once(self, body: dict[str, Any]) -> Any:
        try:
            response = await self.client.post(self.url, json=body, headers=self.headers)
        except httpx.TransportError as exc:
            raise Retry(describe(exc)) from exc
        status = response.status_code
        if not response.is_error:
            try:
                return response.json()
            except ValueError as exc:
                raise ProviderError(f"{self.url}: the answer is not JSON: {exc}") from exc
        message = error_message(status, response.text)
        if status in CLIENT_FAULT:
            param = error_field(response.text, "param")
            raise InvalidRequest(f"{self.name}: {message}", param=param)
        if status in RETRY_STATUS:
            raise Retry(message, retry_after(response))
        raise ProviderError(f"{self.url}: {message}")

    def _parse(self, answer: Any, n: int) -> ProviderResult:
        """OpenAI's embeddings response, checked: n rows of one width, finite."""
        try:
            data = sorted(answer["data"], key=lambda item: item["index"])
            indices = [item["index"] for item in data]
            rows = [item["embedding"] for item in data]
            usage = answer.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens", 0))
        except (LookupError, TypeError, AttributeError, ValueError) as exc:
            raise ProviderError(f"{self.url}: not an embeddings response: {exc!r}") from exc
        if indices != list(range(n)):
            raise ProviderError(f"{self.url}: {n} texts sent, answer has indices {indices[:10]}")
        if any(not isinstance(row, list) for row in rows):
            raise ProviderError(f"{self.url}: an embedding is not a list of floats")
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise ProviderError(f"{self.url}: embeddings of different lengths: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[1] == 0:
            raise ProviderError(f"{self.url}: embeddings of shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ProviderError(f"{self.url}: an embedding has values that are not finite")
        return ProviderResult(vectors, prompt_tokens)
