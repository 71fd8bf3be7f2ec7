"""Prometheus metrics, one registry per app so several apps in one process do not collide.

Request counters and histograms are updated as requests finish; the engine's gauges (running
and waiting sequences, KV blocks) and token counters are read from the engine when /metrics
is scraped, so they count every sequence, whichever route or service submitted it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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


_CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class _EmbeddingsCollector(Collector):
    """The embedding service's counters, read when /metrics is scraped: `stats()` gives
    {"requests", "inputs", "cached", "batches", "batch_rows", "padded_tokens", "tokens",
    "cache": {hits, misses, size, evictions, ...}, "providers": {name: {state,
    total_failures, total_rejections}}, "jobs": {"stages": {stage: {done, queued}}}}.
    (Request latency is glassbox_request_duration_seconds{route="/v1/embeddings"}.)"""

    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        counters = {
            "requests": "Embedding requests served",
            "inputs": "Texts embedded or answered from the cache",
            "cached": "Texts answered from the cache",
            "batches": "Batches the local model ran",
            "batch_rows": "Rows in those batches (rows / batches: the mean batch size)",
            "padded_tokens": "Tokens the local model computed, padding included",
            "tokens": "Tokens of the texts themselves",
        }
        for key, doc in counters.items():
            yield CounterMetricFamily(f"glassbox_embedding_{key}", doc, value=s.get(key, 0))
        cache = s.get("cache", {})
        for key in ("hits", "misses", "evictions"):
            yield CounterMetricFamily(
                f"glassbox_embedding_cache_{key}", f"Embedding cache {key}",
                value=cache.get(key, 0),
            )  # fmt: skip
        yield GaugeMetricFamily(
            "glassbox_embedding_cache_size", "Vectors in the embedding cache",
            value=cache.get("size", 0),
        )  # fmt: skip
        looked = cache.get("hits", 0) + cache.get("misses", 0)
        yield GaugeMetricFamily(
            "glassbox_embedding_cache_hit_rate", "Hits / lookups of the embedding cache",
            value=cache.get("hits", 0) / looked if looked else 0.0,
        )  # fmt: skip
        state = GaugeMetricFamily(
            "glassbox_embedding_provider_circuit",
            "Circuit of each embedding provider: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        failures = CounterMetricFamily(
            "glassbox_embedding_provider_failures", "Failed calls per provider",
            labels=["provider"],
        )  # fmt: skip
        for name, snap in s.get("providers", {}).items():
            state.add_metric([name], _CIRCUIT_STATES.get(snap.get("state"), 0))
            failures.add_metric([name], snap.get("total_failures", 0))
        yield state
        yield failures
        stages = s.get("jobs", {}).get("stages", {})
        done = CounterMetricFamily(
            "glassbox_embedding_job_stage_items", "Items each job stage finished",
            labels=["stage"],
        )  # fmt: skip
        queued = GaugeMetricFamily(
            "glassbox_embedding_job_queue_depth", "Items waiting for each job stage",
            labels=["stage"],
        )  # fmt: skip
        for stage, counts in stages.items():
            done.add_metric([stage], counts.get("done", 0))
            queued.add_metric([stage], counts.get("queued", 0))
        yield done
        yield queued


class Metrics:
    def __init__(
        self,
        engine_stats: Callable[[], dict[str, int]] | None = None,
        embedding_stats: Callable[[], dict[str, Any]] | None = None,
    ):
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
        self.rate_limited = Counter(
            "glassbox_rate_limited", "Requests refused by kind: requests or tokens per minute "
            "(429), overloaded (503, the engine's waiting queue is full)", ["kind"], registry=r,
        )  # fmt: skip
        self.auth_failures = Counter(
            "glassbox_auth_failures", "Requests refused for their API key: missing (no key), "
            "invalid (unknown, expired or revoked), forbidden (a scope the key lacks)",
            ["reason"], registry=r,
        )  # fmt: skip
        if engine_stats is not None:
            r.register(_EngineCollector(engine_stats))
        if embedding_stats is not None:
            r.register(_EmbeddingsCollector(embedding_stats))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
