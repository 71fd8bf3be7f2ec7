"""/health/ready is readiness, apart from /health (liveness): 200 once the model, the feature
dictionaries (when warmed at start-up) and the database are ready, else 503 naming the part
that is not; open like /health when API keys are required."""

from __future__ import annotations

import httpx
import pytest
from helpers.server import LiveServer, running, tiny_settings


def test_a_started_server_is_ready(http: httpx.Client) -> None:
    """The shared server warms no features (warm_features=false): they count as ready."""
    r = http.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "ready": True,
        "checks": {
            "model": {"ok": True, "error": None},
            "features": {"ok": True, "error": None},
            "database": {"ok": True, "error": None},
        },
    }


def test_not_ready_names_the_parts_while_liveness_stays_200(
    tiny_model_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(
        update={"warm_features": True, "warm_features_after": 3600.0, "api_keys": "required"}
    )
    with running(settings) as server, httpx.Client(base_url=server.base_url) as http:
        r = http.get("/health/ready")  # no key: open like /health
        assert r.status_code == 503, r.text
        checks = r.json()["checks"]
        assert checks["features"] == {
            "ok": False,
            "error": "feature dictionaries and index: pending",
        }
        assert checks["model"]["ok"] and checks["database"]["ok"]

        _database_down(server, monkeypatch)
        r = http.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == {
            "ok": False,
            "error": "OperationalError: database is gone",
        }
        assert http.get("/health").status_code == 200  # alive: no restart for it


def _database_down(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def ping() -> None:
        raise OperationalError("database is gone")

    monkeypatch.setattr(server.app.state.db, "ping", ping)


class OperationalError(Exception):
    """Stands for the driver's error when the database cannot be reached."""
