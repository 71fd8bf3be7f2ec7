"""OpenTelemetry tracing on a live server: off (and opentelemetry not even imported) unless
configured; on, a server span per request with the engine's spans nested under it, carrying
counts and never text; exported over OTLP/HTTP to a configured endpoint."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from helpers.server import TINY_NAME, LiveServer
from helpers.waiting import wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from glassbox import tracing

SECRET = "tangerine-" + "submarine"
CHAT = {"model": TINY_NAME, "messages": [{"role": "user", "content": f"Say {SECRET}"}],
        "max_tokens": 4, "ignore_eos": True}  # fmt: skip


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(None, "glassbox-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list]:
    out: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def all_text(span) -> str:
    """Everything a span carries as text: name, attributes, events and resource."""
    parts = [span.name, repr(dict(span.attributes)), repr(dict(span.resource.attributes))]
    parts += [e.name + repr(dict(e.attributes or {})) for e in span.events]
    return " ".join(parts)


@pytest.mark.parametrize("stream", [False, True])
def test_request_engine_and_stream_spans_nest(tiny_server: LiveServer, spans, stream) -> None:
    route = "/v1/chat/completions"
    with httpx.Client(base_url=tiny_server.base_url, timeout=60) as http:
        r = http.post(route, json={**CHAT, "stream": stream}, headers={"x-request-id": "tr-1"})
        assert r.status_code == 200
    # the server span ends once the last body message is sent, just after the client has it
    assert wait_until(lambda: f"POST {route}" in by_name(spans), 5)
    named = by_name(spans)
    (server,) = named[f"POST {route}"]
    (engine,) = named["engine.request"]
    (streamed,) = named["engine.stream"]
    assert server.kind == SpanKind.SERVER and server.parent is None
    assert server.attributes["http.route"] == route
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["glassbox.request_id"] == "tr-1"
    trace_id = server.context.trace_id
    assert engine.context.trace_id == streamed.context.trace_id == trace_id
    assert engine.parent.span_id == server.context.span_id  # request -> engine -> stream
    assert streamed.parent.span_id == engine.context.span_id
    assert server.start_time <= engine.start_time <= streamed.start_time
    assert streamed.end_time <= engine.end_time <= server.end_time
    assert engine.attributes["gen_ai.usage.output_tokens"] == 4
    assert engine.attributes["gen_ai.usage.input_tokens"] > 0
    assert engine.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert [e.name for e in engine.events] == ["first_token"]
    assert streamed.attributes["glassbox.tokens_streamed"] == 4
    for span in spans.get_finished_spans():
        assert SECRET not in all_text(span) and "Say" not in all_text(span)
        assert span.resource.attributes["service.name"] == "glassbox-test"


def test_a_client_traceparent_is_the_parent(tiny_server: LiveServer, spans) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    header = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    with httpx.Client(base_url=tiny_server.base_url, timeout=60) as http:
        assert http.get("/v1/models", headers=header).status_code == 200
    assert wait_until(lambda: "GET /v1/models" in by_name(spans), 5)
    (server,) = by_name(spans)["GET /v1/models"]
    assert f"{server.context.trace_id:032x}" == trace_id
    assert f"{server.parent.span_id:016x}" == parent_id


def test_spans_go_to_the_otlp_endpoint(tiny_server: LiveServer) -> None:
    received: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"], len(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    collector = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        assert tracing.configure(f"http://127.0.0.1:{collector.server_port}", "glassbox")
        with httpx.Client(base_url=tiny_server.base_url, timeout=60) as http:
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        tracing.shutdown()  # exports what the batch holds
    finally:
        tracing.shutdown()
        collector.shutdown()
    assert received and received[0][:2] == ("/v1/traces", "application/x-protobuf")


def test_off_unless_configured(tiny_server: LiveServer) -> None:
    """Nothing configured: no tracer and no global provider set; in a fresh process that
    builds the app and serves a request, no tracing SDK or exporter module is imported
    (fastapi and redis import the opentelemetry API themselves when it is installed)."""
    assert not tracing.enabled()
    with httpx.Client(base_url=tiny_server.base_url, timeout=60) as http:
        assert http.get("/v1/models").status_code == 200
    assert not tracing.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from glassbox.app import create_app\n"
        "from glassbox.config import Settings\n"
        "from glassbox import tracing\n"
        "app = create_app(Settings())\n"
        "assert TestClient(app).get('/nowhere').status_code == 404\n"
        "assert not tracing.enabled()\n"
        "sdk = ('opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(sdk))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_glassbox_imports_opentelemetry_only_inside_functions() -> None:
    """No module of glassbox imports opentelemetry when it is imported: only the functions
    of glassbox.tracing that run once tracing is on."""
    root = Path(tracing.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        inside = {id(inner) for f in functions for inner in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("opentelemetry") for n in names), path


def test_traces_url() -> None:
    assert tracing.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
