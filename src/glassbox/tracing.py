"""Optional OpenTelemetry tracing: off unless GLASSBOX_OTEL_ENDPOINT is set, and then spans go
over OTLP/HTTP to that collector.

Three spans per generation request:

    HTTP request (server span: method, route, status)        api/middleware.py
      engine.request (submission to finish: token counts)  requests/generation.py
        engine.stream (first token to last: tokens streamed)

Spans carry counts, never text: no prompt, message, generated token or key is an attribute.

Off, it costs a check of a module global per request and per generation, and nothing here
imports opentelemetry: `configure` imports it when it turns tracing on. The provider is
glassbox's own (not the global one of `opentelemetry.trace`), so apps in one process (the
tests) can turn it on and off; a W3C `traceparent` header from the client is honoured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None

TRACES_PATH = "/v1/traces"


def enabled() -> bool:
    return _tracer is not None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector: `endpoint` as given if it ends in /v1/traces,
    else with /v1/traces appended (as OTEL_EXPORTER_OTLP_ENDPOINT is read)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def configure(
    endpoint: str | None, service_name: str = "glassbox", *, exporter: Any = None
) -> bool:
    """Turn tracing on: spans batched to the OTLP/HTTP collector at `endpoint`, or each one
    handed to `exporter` as it ends (a SpanExporter: the tests' InMemorySpanExporter). With
    neither, nothing happens (and nothing is imported). True if tracing is on."""
    global _tracer, _provider
    if endpoint is None and exporter is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(traces_url(endpoint))))
    _provider, _tracer = provider, provider.get_tracer("glassbox")
    return True


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


# --- the HTTP request ---------------------------------------------------------------------


@contextmanager
def http_span(method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Iterator[Any]:
    """The server span of an HTTP request, current while the request runs (streams included):
    the span, or None when tracing is off. Name it with its route when known (`end_http`)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    attributes = {"http.request.method": method, "url.path": path}
    with _tracer.start_as_current_span(
        method, context=extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def end_http(span: Any, method: str, route: str, status: int, request_id: str) -> None:
    """The request's route and status, once the response has been sent."""
    from opentelemetry.trace import Status, StatusCode

    span.update_name(f"{method} {route}")
    span.set_attributes({
        "http.route": route, "http.response.status_code": status,
        "glassbox.request_id": request_id,
    })  # fmt: skip
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


# --- one engine request -------------------------------------------------------------------


class EngineSpan:
    """`engine.request` from submission to finish, a child of the span current when it is
    made (the HTTP request's); `engine.stream` under it from the first token to the last
    output handed on. Only counts are recorded."""

    def __init__(self, prompt_tokens: int, max_tokens: int):
        from opentelemetry import trace

        self._trace = trace
        self.span = _tracer.start_span("engine.request", attributes={
            "gen_ai.request.max_tokens": max_tokens, "glassbox.prompt_tokens": prompt_tokens,
        })  # fmt: skip
        self.stream: Any = None
        self.streamed = 0

    def output(self, out: Any) -> None:
        """One output (an engine StepOutput) of the sequence, about to be handed on."""
        if self.stream is None:
            self.span.add_event("first_token")
            parent = self._trace.set_span_in_context(self.span)
            self.stream = _tracer.start_span("engine.stream", context=parent)
        self.streamed += len(out.token_ids)
        if out.finish_reason is not None:
            self.span.set_attributes({
                "gen_ai.response.finish_reasons": [out.finish_reason],
                "gen_ai.usage.input_tokens": out.num_prompt_tokens,
                "gen_ai.usage.output_tokens": out.num_output_tokens,
                "glassbox.cached_tokens": out.num_cached_tokens,
            })  # fmt: skip

    def end(self, error: BaseException | None = None) -> None:
        """Both spans end; `error`: what ended the sequence early, if anything (a consumer
        that closed it, e.g. a client that left, is not an error: "glassbox.aborted")."""
        if self.stream is not None:
            self.stream.set_attribute("glassbox.tokens_streamed", self.streamed)
            self.stream.end()
        if isinstance(error, GeneratorExit | asyncio.CancelledError):
            self.span.set_attribute("glassbox.aborted", True)
        elif error is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.span.end()


def engine_span(prompt_tokens: int, max_tokens: int) -> EngineSpan | None:
    """An engine request's spans, or None when tracing is off."""
    return EngineSpan(prompt_tokens, max_tokens) if _tracer is not None else None
