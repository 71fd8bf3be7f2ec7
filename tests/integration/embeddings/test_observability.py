"""What /health and /metrics say of the embedding service and its jobs on a whole server."""

from __future__ import annotations

import re

import httpx
from helpers.waiting import wait_until


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_health_and_metrics_show_embeddings_and_jobs(embeddings_server):
    with httpx.Client(base_url=embeddings_server.base_url, timeout=60) as http:
        before = http.get("/metrics").text
        http.post("/v1/embeddings", json={"input": ["observed once", "observed twice"]})
        http.post("/v1/embeddings", json={"input": "observed once"})  # from the cache
        job = http.post(
            "/api/v1/embeddings/jobs",
            json={"user_id": "obs", "documents": [{"text": "word " * 300}]},
        ).json()
        done = wait_until(
            lambda: (
                http.get(f"/api/v1/embeddings/jobs/{job['job_id']}").json()["status"] == "completed"
            ),
            60,
        )
        assert done
        components = http.get("/health").json()["components"]
        assert components["database"] == {"ok": True}
        assert components["jobs"]["mode"] == "in-process" and components["jobs"]["workers"]
        assert components["embeddings"]["model"]["loaded"] is True
        stage = 'glassbox_embedding_job_stage_items_total{stage="storage"}'
        assert wait_until(lambda: metric(http.get("/metrics").text, stage) > 0, 15)
        after = http.get("/metrics").text
    for name, grew_by in [
        ("glassbox_embedding_requests_total", 2),
        ("glassbox_embedding_cached_total", 1),
    ]:
        assert metric(after, name) - metric(before, name) >= grew_by, name
    assert metric(after, "glassbox_embedding_batches_total") > 0
    assert 0 < metric(after, "glassbox_embedding_cache_hit_rate") <= 1
    assert 'glassbox_embedding_provider_circuit{provider="local"} 0.0' in after
