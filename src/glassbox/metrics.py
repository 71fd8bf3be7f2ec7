"""Prometheus metrics, one registry per app so several apps in one process do not collide.

Request counters and histograms are updated as requests finish; the engine's gauges (running
and waiting sequences, KV blocks) and token counters are read from the engine when /metrics
is scraped, so they count every sequence, whichever route or service submitted it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

_ENGINE_GAUGES = {
    "running": (
        "glassbox_num_requests_running",
        "Sequences admitted (decoding, or part way through a chunked prefill)",
    ),
    "waiting": ("glassbox_num_requests_waiting", "Sequences waiting to be scheduled"),
    "kv_blocks_used": ("glassbox_kv_blocks_used", "KV cache blocks in use"),
    "kv_blocks_total": ("glassbox_kv_blocks_total", "KV cache blocks in the pool"),
}


_ENGINE_COUNTERS = {
    "prompt_tokens": (
        "glassbox_prompt_tokens",
        "Prompt tokens processed (requests, KV states, beam searches)",
    ),
    "generation_tokens": ("glassbox_generation_tokens", "Tokens generated (every sequence)"),
    "prefix_cached_tokens": (
        "glassbox_prefix_cache_hit_tokens",
        "Prompt tokens whose KV came from the prefix cache instead of being computed",
    ),
}


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, int]]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        for key, (name, doc) in _ENGINE_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        for key, (name, doc) in _ENGINE_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))


class Metrics:
    def __init__(self, engine_stats: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "glassbox_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "glassbox_request_duration_seconds", "HTTP request latency (streams: until the end)",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "glassbox_time_to_first_token_seconds", "From submission to the first generated token",
            buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        if engine_stats is not None:
            r.register(_EngineCollector(engine_stats))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
