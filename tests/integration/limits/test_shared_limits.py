"""Rate limits in a real Redis: two app instances on one Redis share each tenant's counts, so
a client cannot double its budget by spreading requests over processes. Without Redis (a dead
URL) requests are let through rather than refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers.live_server import free_port
from helpers.redis_server import running_redis
from helpers.server import running, tiny_settings

REQUESTS = 4


def test_two_instances_on_one_redis_share_the_requests_per_minute(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    with running_redis() as url:
        settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
            update={"redis_url": url, "rate_limit_requests": REQUESTS}
        )
        with running(settings) as a, running(settings) as b:
            statuses = [
                httpx.get(server.base_url + "/v1/models").status_code
                for server in (a, b, a, b, a, b)
            ]
            refused = httpx.get(b.base_url + "/v1/models")

    assert statuses == [200] * REQUESTS + [429, 429]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_an_unreachable_redis_lets_requests_through(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache")).model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "rate_limit_requests": 1}
    )
    with running(settings) as server:
        statuses = {httpx.get(server.base_url + "/v1/models").status_code for _ in range(3)}
    assert statuses == {200}
