"""The circuit breaker (fake clock), the fallback chain (in-test providers), and RemoteProvider's
retries and parsing against scripted answers (httpx.MockTransport). RemoteProvider against a
real server: tests/integration/embeddings/test_remote_provider.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from glassbox.embeddings.providers import (
    CircuitBreaker,
    CircuitOpen,
    ProviderChain,
    ProviderError,
    ProviderResult,
    RemoteProvider,
)
from glassbox.errors import InvalidRequest, ModelNotFound, Unavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Boom(Exception):
    pass


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom), breaker.guard():
            raise Boom


def succeed(breaker: CircuitBreaker) -> None:
    with breaker.guard():
        pass


# --- CircuitBreaker -----------------------------------------------------------------------


def test_opens_after_the_threshold_of_consecutive_failures():
    breaker = CircuitBreaker(failure_threshold=3, recovery_seconds=30, clock=FakeClock())
    fail(breaker, 2)
    succeed(breaker)  # not consecutive any more
    fail(breaker, 2)
    assert breaker.state == "closed" and breaker.failures == 2

    fail(breaker)

    assert breaker.state == "open"
    assert breaker.snapshot() == {
        "state": "open",
        "failures": 3,
        "opened_seconds_ago": 0.0,
        "total_failures": 5,
        "total_rejections": 0,
    }


def test_an_open_circuit_refuses_at_once_until_the_recovery_time():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=30, clock=clock)
    fail(breaker)
    ran = []
    clock.now += 29.9
    with pytest.raises(CircuitOpen, match="next probe in 0.1 s"), breaker.guard():
        ran.append(True)
    assert not ran and breaker.snapshot()["total_rejections"] == 1

    clock.now += 0.1

    assert breaker.state == "half_open"
    assert breaker.snapshot()["opened_seconds_ago"] == pytest.approx(30)


async def test_half_open_lets_exactly_one_probe_through():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=5, clock=clock)
    fail(breaker)
    clock.now += 5
    ran = []

    async def call(i: int) -> int:
        with breaker.guard():
            ran.append(i)
            await asyncio.sleep(0.02)  # the probe is still running when the others come
            return i

    results = await asyncio.gather(*(call(i) for i in range(4)), return_exceptions=True)

    assert ran == [0] and results[0] == 0
    assert all(isinstance(r, CircuitOpen) for r in results[1:])
    assert breaker.state == "closed" and breaker.failures == 0
    assert breaker.snapshot()["total_rejections"] == 3
    succeed(breaker)  # closed again: everyone goes through


def test_a_failed_probe_opens_the_circuit_again_for_a_full_period():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, recovery_seconds=10, clock=clock)
    fail(breaker, 2)
    clock.now += 15  # half-open

    fail(breaker)  # the probe

    assert breaker.state == "open" and breaker.snapshot()["opened_seconds_ago"] == 0
    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half_open"


async def test_a_cancelled_probe_frees_the_slot_without_a_verdict():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=5, clock=clock)
    fail(breaker)
    clock.now += 5

    async def hang() -> None:
        with breaker.guard():
            await asyncio.sleep(60)

    probe = asyncio.create_task(hang())
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe

    assert breaker.state == "half_open"
    succeed(breaker)  # the next caller is the probe
    assert breaker.state == "closed"


def test_calls_admitted_before_the_circuit_opened_do_not_decide_it():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=5, clock=clock)
    late = breaker.guard()
    late.__enter__()  # admitted while closed, ends after the circuit opened
    fail(breaker)

    late.__exit__(None, None, None)

    assert breaker.state == "open"


def test_an_exempt_error_counts_as_an_answer():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_seconds=5, clock=clock)
    for _ in range(3):
        with pytest.raises(InvalidRequest), breaker.guard(exempt=(InvalidRequest,)):
            raise InvalidRequest("input too long")
    assert breaker.state == "closed" and breaker.snapshot()["total_failures"] == 0

    fail(breaker)
    clock.now += 5
    with pytest.raises(InvalidRequest), breaker.guard(exempt=(InvalidRequest,)):
        raise InvalidRequest("input too long")  # the probe: the provider answered
    assert breaker.state == "closed"


# --- ProviderChain ------------------------------------------------------------------------


class ScriptedProvider:
    """Answers with rows of `value`, or raises `error`; serves `models` (None: any)."""

    def __init__(self, name: str, value: float = 1.0, models: set[str] | None = None):
        self.name = name
        self.value = value
        self.models = models
        self.error: Exception | None = None
        self.calls = 0

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    async def embed(self, texts: list[str], model: str) -> ProviderResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return ProviderResult(np.full((len(texts), 3), self.value, np.float32), len(texts))


def chain_of(*providers: ScriptedProvider, threshold: int = 2) -> ProviderChain:
    breakers = {
        p.name: CircuitBreaker(threshold, recovery_seconds=60, clock=FakeClock()) for p in providers
    }
    return ProviderChain(list(providers), breakers)


async def test_the_first_provider_answers():
    one, two = ScriptedProvider("one", 1.0), ScriptedProvider("two", 2.0)

    result, name = await chain_of(one, two).embed(["a", "b"], "m")

    assert name == "one" and result.vectors.shape == (2, 3) and result.prompt_tokens == 2
    assert (one.calls, two.calls) == (1, 0)


async def test_a_failing_provider_falls_back_to_the_next_and_opens_its_circuit():
    one, two = ScriptedProvider("one", 1.0), ScriptedProvider("two", 2.0)
    one.error = ProviderError("http://one/v1/embeddings: error 500: down")
    chain = chain_of(one, two, threshold=2)

    for _ in range(3):
        result, name = await chain.embed(["a"], "m")
        assert name == "two" and result.vectors[0, 0] == 2.0

    assert one.calls == 2  # the third call skipped it: its circuit is open
    health = chain.health()
    assert health["one"]["state"] == "open" and health["one"]["total_rejections"] == 1
    assert health["two"]["state"] == "closed"


async def test_any_exception_of_a_provider_is_a_failure():
    one, two = ScriptedProvider("one"), ScriptedProvider("two", 2.0)
    one.error = RuntimeError("the model crashed")
    chain = chain_of(one, two)

    _, name = await chain.embed(["a"], "m")

    assert name == "two" and chain.health()["one"]["failures"] == 1


async def test_with_no_provider_left_the_503_says_why_for_each():
    one, two, three = ScriptedProvider("one"), ScriptedProvider("two"), ScriptedProvider("three")
    one.error = ProviderError("http://one/v1/embeddings: error 502: bad gateway")
    two.error = RuntimeError("out of memory")
    three.error = ProviderError("http://three/v1/embeddings: ConnectError (after 3 attempts)")
    chain = chain_of(one, two, three, threshold=1)
    with pytest.raises(Unavailable):
        await chain.embed(["a"], "m")  # opens all three

    with pytest.raises(Unavailable) as raised:
        await chain.embed(["a"], "m")

    assert raised.value.code == "embedding_unavailable"
    assert raised.value.message == (
        "no embedding provider could serve the model 'm': "
        "one: circuit open, next probe in 60.0 s; "
        "two: circuit open, next probe in 60.0 s; "
        "three: circuit open, next probe in 60.0 s"
    )
    two.error = None
    chain.breakers["two"].clock.now += 60  # two's probe succeeds
    assert (await chain.embed(["a"], "m"))[1] == "two"


async def test_the_503_carries_each_providers_error():
    one, two = ScriptedProvider("one"), ScriptedProvider("two")
    one.error = ProviderError("http://one/v1/embeddings: error 502: bad gateway")
    two.error = RuntimeError("out of memory")

    with pytest.raises(Unavailable, match=r"'m': one: ProviderError: http://one/v1/embeddings: "
                       r"error 502: bad gateway; two: RuntimeError: out of memory$"):  # fmt: skip
        await chain_of(one, two).embed(["a"], "m")


async def test_a_callers_mistake_is_raised_at_once_and_is_no_failure():
    one, two = ScriptedProvider("one"), ScriptedProvider("two")
    one.error = InvalidRequest("one: error 400: input too long", param="input")
    chain = chain_of(one, two, threshold=1)

    for _ in range(3):
        with pytest.raises(InvalidRequest, match="input too long") as raised:
            await chain.embed(["a" * 10_000], "m")
        assert raised.value.param == "input"

    assert (one.calls, two.calls) == (3, 0)
    assert chain.health()["one"]["state"] == "closed"
    assert chain.health()["one"]["total_failures"] == 0


async def test_only_providers_serving_the_model_are_asked():
    small = ScriptedProvider("small", 1.0, models={"mini"})
    large = ScriptedProvider("large", 2.0, models={"big"})
    chain = chain_of(small, large)

    assert (await chain.embed(["a"], "big"))[1] == "large"
    with pytest.raises(ModelNotFound, match="no embedding provider serves the model 'huge'"):
        await chain.embed(["a"], "huge")
    assert small.calls == 0


def test_a_chain_from_names_keeps_their_order():
    available = {n: ScriptedProvider(n) for n in ("local", "openai", "vllm")}

    chain = ProviderChain.from_names(["vllm", "local"], available)

    assert [p.name for p in chain.providers] == ["vllm", "local"]
    assert set(chain.health()) == {"vllm", "local"}
    with pytest.raises(ValueError, match=r"unknown embedding providers \['tei'\]"):
        ProviderChain.from_names(["local", "tei"], available)
    with pytest.raises(ValueError, match="unique"):
        ProviderChain([available["local"], available["local"]])


# --- RemoteProvider against scripted answers ------------------------------------------------


def embeddings_answer(rows: list[list[float]], tokens: int = 7, order=None) -> dict:
    order = order or range(len(rows))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": rows[i]} for i in order],
        "model": "remote-model",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def scripted(*answers: httpx.Response | Exception) -> tuple[Callable, list[httpx.Request]]:
    """A handler giving `answers` in turn (an exception is raised, as a failed connection)."""
    queue, seen = list(answers), []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


def remote(handler: Callable, **options) -> RemoteProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    options = {"retries": 2, "backoff": 0.0, **options}
    return RemoteProvider("remote", "http://gpu:8000/v1/", client=client, **options)


def ok(rows: list[list[float]], **kw) -> httpx.Response:
    return httpx.Response(200, json=embeddings_answer(rows, **kw))


def error(status: int, message: str = "nope", param=None, **headers) -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "param": param, "code": None}}
    return httpx.Response(status, json=body, headers=headers)


async def test_sends_openais_request_and_reads_the_rows_in_index_order():
    handler, seen = scripted(ok([[1, 2], [3, 4], [5, 6]], tokens=9, order=[2, 0, 1]))
    provider = remote(handler, model_map={"small": "BAAI/bge-small"}, api_key="sk-1")

    result = await provider.embed(["a", "b", "c"], "small")

    assert result.vectors.dtype == np.float32
    assert result.vectors.tolist() == [[1, 2], [3, 4], [5, 6]] and result.prompt_tokens == 9
    (request,) = seen
    assert str(request.url) == "http://gpu:8000/v1/embeddings"
    assert request.headers["authorization"] == "Bearer sk-1"
    assert json.loads(request.content) == {
        "model": "BAAI/bge-small",
        "input": ["a", "b", "c"],
        "encoding_format": "float",
    }


def test_serves_the_mapped_models_or_any():
    assert RemoteProvider("r", "http://x/v1", {"small": "bge"}).serves("small")
    assert not RemoteProvider("r", "http://x/v1", {"small": "bge"}).serves("bge")
    assert RemoteProvider("r", "http://x/v1").serves("anything")


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_retryable_statuses_are_retried(status: int):
    handler, seen = scripted(error(status), error(status), ok([[1.0]]))

    result = await remote(handler).embed(["a"], "m")

    assert len(seen) == 3 and result.vectors.tolist() == [[1.0]]


async def test_transport_failures_are_retried_with_doubling_backoff_then_fail():
    handler, seen = scripted(*[httpx.ConnectError("refused")] * 3)
    started = time.monotonic()

    with pytest.raises(ProviderError, match=r"ConnectError: refused \(after 3 attempts\)"):
        await remote(handler, backoff=0.05).embed(["a"], "m")

    assert len(seen) == 3 and time.monotonic() - started >= 0.05 + 0.1


async def test_a_read_timeout_is_retried():
    handler, seen = scripted(httpx.ReadTimeout("slow"), ok([[1.0]]))

    await remote(handler).embed(["a"], "m")

    assert len(seen) == 2


async def test_retry_after_is_honoured():
    handler, seen = scripted(error(429, **{"Retry-After": "0.2"}), ok([[1.0]]))
    started = time.monotonic()

    await remote(handler).embed(["a"], "m")

    assert len(seen) == 2 and time.monotonic() - started >= 0.2


async def test_a_retry_after_beyond_the_limit_is_given_up_at_once():
    handler, seen = scripted(error(503, "busy", **{"Retry-After": "60"}))

    with pytest.raises(ProviderError, match=r"error 503: busy \(not retried\)"):
        await remote(handler).embed(["a"], "m")

    assert len(seen) == 1


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_the_callers_faults_are_invalid_requests_not_retried(status: int):
    handler, seen = scripted(error(status, "input is too long", param="input"))

    with pytest.raises(InvalidRequest, match=f"remote: error {status}: input is too long") as e:
        await remote(handler).embed(["a"], "m")

    assert e.value.param == "input" and len(seen) == 1


@pytest.mark.parametrize("status", [401, 403, 404, 500, 501])
async def test_other_failures_are_provider_errors_not_retried(status: int):
    handler, seen = scripted(error(status, "bad key"))

    with pytest.raises(ProviderError, match=f"gpu:8000/v1/embeddings: error {status}: bad key"):
        await remote(handler).embed(["a"], "m")

    assert len(seen) == 1


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json={"object": "list"}), "not an embeddings response"),
        (httpx.Response(200, json=[1, 2]), "not an embeddings response"),
        (ok([[1.0, 2.0]]), r"2 texts sent, answer has indices \[0\]"),
        (ok([[1.0, 2.0], [1.0, 2.0]], order=[0, 0]), r"indices \[0, 0\]"),
        (ok([[1.0, 2.0], [1.0]]), "different lengths"),
        (ok([[], []]), r"shape \(2, 0\)"),
        (ok([[1.0, float("nan")], [1.0, 2.0]]), "not finite"),
        (ok(["AACAPw==", "AACAPw=="]), "not a list of floats"),
        (ok([[1.0, "x"], [1.0, 2.0]]), "different lengths|could not convert"),
    ],
)
async def test_a_malformed_answer_is_a_provider_error(answer: httpx.Response, complaint: str):
    handler, _ = scripted(answer)

    with pytest.raises(ProviderError, match=complaint):
        await remote(handler).embed(["a", "b"], "m")


async def test_missing_usage_counts_no_tokens():
    body = embeddings_answer([[1.0]])
    del body["usage"]
    handler, _ = scripted(httpx.Response(200, json=body))

    assert (await remote(handler).embed(["a"], "m")).prompt_tokens == 0


async def test_a_client_passed_in_is_not_closed():
    handler, _ = scripted(ok([[1.0]]))
    provider = remote(handler)

    await provider.aclose()

    assert not provider.client.is_closed
    await provider.client.aclose()
