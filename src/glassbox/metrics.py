"""Prometheus metrics, one registry per app so several apps in one process do not collide.

Request counters and histograms are updated as requests finish; the engine's gauges (running
and waiting sequences, KV blocks) and token counters are read from the engine when /metrics
is scraped, so they count every sequence, whichever route or service submitted it. So are
the services' figures (embeddings and jobs, states, features, sessions): each collector
calls its service's `stats()` at scrape time, and the services keep plain counts.
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
    "steered_requests": (
        "glassbox_steered_requests",
        "Engine requests that ran with a steering plan (a variant, an emotion, vectors)",
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
    total_failures, total_rejections}}, "jobs": `JobService.stats()`}.
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
        jobs = s.get("jobs", {})
        by_status = GaugeMetricFamily(
            "glassbox_embedding_jobs", "Embedding jobs in each status (every job the database "
            "holds: queued, running, completed, failed, cancelled)", labels=["status"],
        )  # fmt: skip
        for status, n in jobs.get("statuses", {}).items():
            by_status.add_metric([status], n)
        yield by_status
        running = GaugeMetricFamily(
            "glassbox_embedding_jobs_running", "Running embedding jobs by the first stage they "
            "have not finished", labels=["stage"],
        )  # fmt: skip
        for stage, n in jobs.get("running_stages", {}).items():
            running.add_metric([stage], n)
        yield running
        yield GaugeMetricFamily(
            "glassbox_embedding_job_dead_letters", "Entries in the job queue's dead-letter "
            "stream (Redis mode; in-process jobs fail instead)",
            value=jobs.get("dead_lettered", 0),
        )  # fmt: skip


class _StatesCollector(Collector):
    """The KV state service, read when /metrics is scraped (`StateService.stats()`)."""

    def __init__(self, stats: Callable[[], dict[str, int]]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        where = GaugeMetricFamily(
            "glassbox_states", "KV states by where their KV is: memory (in the engine's pool), "
            "disk (spilled to its file), tokens (recomputed on next use)", labels=["location"],
        )  # fmt: skip
        for location in ("memory", "disk", "tokens"):
            where.add_metric([location], s.get(location, 0))
        yield where
        gauges = {
            "file_bytes": "Bytes of the states' files on disk",
            "resident_bytes": "Bytes of the KV pool the resident states hold (shared blocks once)",
            "budget_bytes": "The most of the KV pool resident states may hold before spilling",
        }
        for key, doc in gauges.items():
            yield GaugeMetricFamily(f"glassbox_state_{key}", doc, value=s.get(key, 0))
        ops = CounterMetricFamily(
            "glassbox_state_operations", "States forked, exported and imported",
            labels=["operation"],
        )  # fmt: skip
        for key, op in (("forks", "fork"), ("exports", "export"), ("imports", "import")):
            ops.add_metric([op], s.get(key, 0))
        yield ops


class _FeaturesCollector(Collector):
    """The feature service (`FeatureService.stats()`)."""

    def __init__(self, stats: Callable[[], dict[str, Any]]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        yield GaugeMetricFamily(
            "glassbox_features_ready", "1 once the dictionaries and the search index are loaded",
            value=1 if s.get("ready") else 0,
        )  # fmt: skip
        dictionaries = s.get("dictionaries", {})
        yield GaugeMetricFamily(
            "glassbox_feature_dictionaries", "Feature dictionaries loaded",
            value=len(dictionaries),
        )  # fmt: skip
        sizes = GaugeMetricFamily(
            "glassbox_feature_dictionary_features", "Features in each loaded dictionary",
            labels=["dictionary"],
        )  # fmt: skip
        for name, n in dictionaries.items():
            sizes.add_metric([name], n)
        yield sizes
        calls = CounterMetricFamily(
            "glassbox_feature_calls", "Feature service calls: search, rerank, neighbors, "
            "inspect, contrast, autosteer, logits", labels=["kind"],
        )  # fmt: skip
        for kind in ("search", "rerank", "neighbors", "inspect", "contrast", "autosteer",
                     "logits"):  # fmt: skip
            calls.add_metric([kind], s.get("calls", {}).get(kind, 0))
        yield calls


class _SessionsCollector(Collector):
    """The chat session service (`SessionService.stats()`)."""

    def __init__(self, stats: Callable[[], dict[str, int]]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        yield GaugeMetricFamily("glassbox_sessions", "Chat sessions stored",
                                value=s.get("sessions", 0))  # fmt: skip
        yield GaugeMetricFamily(
            "glassbox_sessions_active", "Chat sessions with a turn in the last 15 minutes",
            value=s.get("active", 0),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "glassbox_session_turns_running", "Session turns being generated now",
            value=s.get("turns_running", 0),
        )  # fmt: skip
        turns = CounterMetricFamily(
            "glassbox_session_turns", "Session turns stored, by the backend of the session's "
            "model: local (the engine, KV kept warm) or backend (another backend)",
            labels=["backend"],
        )  # fmt: skip
        turns.add_metric(["local"], s.get("local_turns", 0))
        turns.add_metric(["backend"], s.get("backend_turns", 0))
        yield turns
        tokens = CounterMetricFamily(
            "glassbox_session_prompt_tokens", "Prompt tokens of local session turns: reused "
            "(KV of the session's state or the prefix cache) or computed", labels=["kv"],
        )  # fmt: skip
        tokens.add_metric(["reused"], s.get("reused_tokens", 0))
        tokens.add_metric(["computed"], s.get("computed_tokens", 0))
        yield tokens
        yield CounterMetricFamily(
            "glassbox_session_rebuilds", "Local turns after the first whose session had no "
            "warm KV (its state gone or unusable): the prompt recomputed from the messages",
            value=s.get("rebuilds", 0),
        )  # fmt: skip


class Metrics:
    def __init__(
        self,
        engine_stats: Callable[[], dict[str, int]] | None = None,
        embedding_stats: Callable[[], dict[str, Any]] | None = None,
        *,
        state_stats: Callable[[], dict[str, int]] | None = None,
        feature_stats: Callable[[], dict[str, Any]] | None = None,
        session_stats: Callable[[], dict[str, Any]] | None = None,
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
        if state_stats is not None:
            r.register(_StatesCollector(state_stats))
        if feature_stats is not None:
            r.register(_FeaturesCollector(feature_stats))
        if session_stats is not None:
            r.register(_SessionsCollector(session_stats))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
