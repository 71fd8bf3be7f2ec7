"""Small HTTP steps the integration tests repeat: make a state, a namespace, a variant."""

from __future__ import annotations

import uuid

import httpx

from helpers.server import TINY_NAME, LiveServer

TEXT = "the quick brown fox jumps over the lazy dog and then the dog runs after the fox"


def create_state(http: httpx.Client, text: str = TEXT, **config) -> dict:
    """POST /states; the state object (201 asserted)."""
    r = http.post("/states", json={"text": text, "config": config})
    assert r.status_code == 201, r.text
    return r.json()


def blocks_used(server: LiveServer) -> int:
    return server.engine.stats()["kv_blocks_used"]


def new_namespace() -> str:
    """A variant namespace (the wire's `session_id`) no other test uses."""
    return f"s-{uuid.uuid4().hex[:12]}"


def nudge_variant(feature: dict, value: float, base_model: str = TINY_NAME) -> dict:
    """An inline variant (Ember's Variant.json()) nudging one feature as /features/search
    reports it."""
    edit = {
        "feature_id": feature["uuid"],
        "feature_label": feature["label"],
        "index_in_sae": feature["index_in_sae"],
        "value": value,
    }
    return {"base_model": base_model, "edits": [edit], "scopes": []}


def pirate_variant(http: httpx.Client, namespace: str, value: float = 1.0) -> dict:
    """A variant nudging the feature /features/search ranks first for "pirate"."""
    r = http.post("/features/search", json={"query": "pirate", "session_id": namespace})
    assert r.status_code == 200, r.text
    return nudge_variant(r.json()[0], value)
