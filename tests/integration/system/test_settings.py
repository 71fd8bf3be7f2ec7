"""Every GLASSBOX_* setting of the README takes effect from the environment: the server that
`glassbox serve` builds (uvicorn's run replaced, the app then served here), the engine that
the settings load, the logging the CLI configures, and the aliases that refuse start-up."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from helpers.live_server import serve_in_thread
from safetensors.torch import save_file

from glassbox import cli
from glassbox.cli import main
from glassbox.config import Settings
from glassbox.features.concepts import load_concept_data
from glassbox.logs import configure_logging, get_logger
from glassbox.runtime import load_engine

SERVED = "env-llama"
HIDDEN = 64  # the tiny model's hidden size
SAE_FEATURES = 6


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_logging():
    yield
    configure_logging("WARNING")


def set_env(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    for key, value in values.items():
        if not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, list | dict) else str(value)
        monkeypatch.setenv(f"GLASSBOX_{key.upper()}", value)


def serve_command(monkeypatch: pytest.MonkeyPatch, *flags: str) -> dict:
    """`glassbox serve FLAGS` up to uvicorn: what its server was asked to run (app, host,
    port, graceful shutdown)."""
    called: dict = {}

    def run(server: uvicorn.Server) -> None:
        config = server.config
        called.update(app=config.app, host=config.host, port=config.port,
                      timeout_graceful_shutdown=config.timeout_graceful_shutdown)  # fmt: skip

    monkeypatch.setattr(cli, "run_server", run)
    assert main(["serve", *flags]) == 0
    return called


def write_sae(directory: Path, layer: int) -> Path:
    """A tiny SAELens SAE directory (cfg.json + sae_weights.safetensors) reading `layer`."""
    directory.mkdir(parents=True)
    cfg = {
        "architecture": "standard",
        "d_in": HIDDEN,
        "d_sae": SAE_FEATURES,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "hook_layer": layer,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
    }
    (directory / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    weights = {
        "W_enc": torch.randn(HIDDEN, SAE_FEATURES, generator=g),
        "b_enc": torch.randn(SAE_FEATURES, generator=g),
        "W_dec": torch.randn(SAE_FEATURES, HIDDEN, generator=g),
        "b_dec": torch.randn(HIDDEN, generator=g),
    }
    save_file(weights, directory / "sae_weights.safetensors")
    return directory


def write_vectors(directory: Path) -> Path:
    """A steering-vector folder with one vector, named by its file."""
    directory.mkdir(parents=True)
    vector = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1))
    save_file({"sea_shanty": vector}, directory / "sea_shanty.safetensors")
    return directory


def test_a_server_configured_from_the_environment(
    tiny_model_dir, tmp_path, monkeypatch, restore_threads, restore_logging
) -> None:
    cache, states_dir, db_file = tmp_path / "cache", tmp_path / "elsewhere", tmp_path / "my.db"
    block_size, kv_bytes = 8, 1024 * 1024
    block_bytes = block_size * 512  # 2 (K, V) * 2 layers * 2 KV heads * 16 dims * 4 bytes
    set_env(
        monkeypatch,
        host="127.0.0.9",
        port=8765,
        model=str(tiny_model_dir),
        served_model_name=SERVED,
        model_aliases={"env-alias": SERVED, "both": SERVED},
        cache_dir=str(cache),
        dtype="float32",
        num_threads=1,
        max_model_len=200,
        block_size=block_size,
        kv_cache_bytes=kv_bytes,
        max_num_seqs=3,
        max_num_batched_tokens=300,
        prefill_chunk_tokens=100,
        state_memory_bytes=4 * block_bytes,
        states_dir=str(states_dir),
        database_url=f"sqlite:///{db_file}",
        features_layer=0,
        feature_saes=[str(write_sae(tmp_path / "tiny-sae", layer=1))],
        steering_vector_dirs=[str(write_vectors(tmp_path / "moods"))],
        warm_features="false",
        log_level="WARNING",
    )
    called = serve_command(monkeypatch, "--model-alias", f"flag-alias={SERVED}",
                           "--model-alias", f"both={SERVED}")  # fmt: skip
    assert (called["host"], called["port"]) == ("127.0.0.9", 8765)
    app = called["app"]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        # names: the served one, the environment's aliases and the flags' (added to them)
        models = http.get("/v1/models").json()["data"]
        models = [m for m in models if "embeddings" not in m["capabilities"]]
        assert [m["id"] for m in models] == [SERVED, "env-alias", "both", "flag-alias"]
        assert {m["max_model_len"] for m in models} == {200}
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        r = http.post("/v1/chat/completions", json={**body, "model": "flag-alias"})
        assert r.status_code == 200 and r.json()["model"] == "flag-alias"
        r = http.post("/v1/chat/completions", json={**body, "model": "tiny-llama"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

        # the engine
        engine = app.state.generation.engine
        shape = engine.model_config  # the model GLASSBOX_MODEL names: the tiny Llama
        vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
        assert (shape.hidden_size, shape.num_layers, shape.vocab_size) == (HIDDEN, 2, vocab)
        # the engine's own view, through its one public door (the engine thread)
        config = asyncio.run(engine.call(lambda e: e.config))
        assert (config.block_size, config.max_model_len) == (block_size, 200)
        assert (config.max_num_seqs, config.max_num_batched_tokens) == (3, 300)
        assert config.prefill_chunk_tokens == 100
        assert config.num_blocks == kv_bytes // block_bytes
        assert http.get("/health").json()["kv_blocks_total"] == kv_bytes // block_bytes
        formats = asyncio.run(engine.call(lambda e: {lin.fmt for lin in linears(e.model)}))
        assert formats == {"float32"}
        # the engine thread, which runs every forward pass, uses the configured thread count
        assert asyncio.run(engine.call(lambda _: torch.get_num_threads())) == 1
        tokens = http.post("/tokenize", json={"prompt": "word " * 300}).json()
        assert tokens["max_model_len"] == 200
        too_long = http.post("/v1/completions", json={"prompt": tokens["tokens"][:200]})
        assert too_long.json()["error"]["code"] == "context_length_exceeded"

        # states: their memory budget, their directory, the database
        assert app.state.states.residency.budget_bytes == 4 * block_bytes
        first = create_state(http, "The lighthouse keeper climbed the stairs slowly and")
        second = create_state(http, "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 and so on")
        assert first["num_tokens"] > 2 * block_size and second["num_tokens"] > 2 * block_size
        # three blocks each: the second does not fit beside the first, which is spilled
        assert http.get(f"/states/{first['id']}").json()["location"] == "disk"
        assert http.get(f"/states/{second['id']}").json()["location"] == "memory"
        assert (states_dir / f"{first['id']}.gbstate").is_file()
        r = http.post(f"/states/{first['id']}/export", json={"name": "kept"})
        assert r.status_code in (200, 201), r.text
        assert (states_dir / "exports" / "local" / "kept.gbstate").is_file()
        with sqlite3.connect(db_file) as db:
            rows = {row[0] for row in db.execute("SELECT state_id FROM states")}
        assert rows == {first["id"], second["id"]}

        # features: the concept vectors at layer 0 cached in the cache dir, the SAE and the
        # vector folder as dictionaries after them
        n = len(load_concept_data().concepts)
        lookup = http.post(
            "/api/inference/v1/features/lookup",
            json={"model": SERVED, "indices": list(range(n, n + SAE_FEATURES + 1))},
        )
        assert lookup.status_code == 200, lookup.text
        labels = [f["label"] for f in lookup.json()["features"]]
        assert labels == [f"feature {i}" for i in range(SAE_FEATURES)] + ["sea_shanty"]
        dictionaries = asyncio.run(app.state.features.dictionaries())
        assert [(d.name, d.layer, len(d)) for d in dictionaries[1:]] == [
            ("tiny-sae", 1, SAE_FEATURES),
            ("moods", 0, 1),
        ]
        assert dictionaries[0].layer == 0
        assert len(list((cache / "features").glob("*-concepts-L0-*.safetensors"))) == 1
        hits = http.post(
            "/features/search", json={"query": "sea shanty", "session_id": "env", "top_k": 3}
        ).json()
        assert hits[0]["label"] == "sea_shanty"
        assert hits[0]["uuid"] == lookup.json()["features"][-1]["uuid"]  # the same feature
    # nothing went to the defaults the settings replaced
    assert not (cache / "glassbox.db").exists() and not (cache / "states").exists()


def linears(model) -> list:
    layers = [
        lin for layer in model.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)
    ]
    return [*layers, model.lm_head]


def create_state(http: httpx.Client, text: str) -> dict:
    r = http.post("/states", json={"text": text})
    assert r.status_code == 201, r.text
    return r.json()


def test_the_engine_loads_as_the_environment_says(
    tiny_model_dir, tmp_path, monkeypatch, restore_threads
) -> None:
    set_env(
        monkeypatch,
        model=str(tiny_model_dir),
        cache_dir=str(tmp_path),
        dtype="int8",
        num_threads=1,
        max_model_len=64,
        block_size=4,
        kv_cache_bytes=65536,
        max_num_seqs=3,
        max_num_batched_tokens=25,
        prefill_chunk_tokens=12,
    )
    engine, _ = load_engine(Settings())
    c = engine.config
    assert (c.block_size, c.num_blocks, c.max_model_len) == (4, 65536 // (4 * 512), 64)
    assert (c.max_num_seqs, c.max_num_batched_tokens, c.prefill_chunk_tokens) == (3, 25, 12)
    assert {lin.fmt for lin in linears(engine.model)} == {"int8"}
    assert {lin.weight.dtype for lin in linears(engine.model)} == {torch.int8}
    assert torch.get_num_threads() == 1

    # max_num_seqs: four short prompts are prefilled three, then one
    from glassbox.engine.sequence import SamplingParams

    one = SamplingParams(max_tokens=1, temperature=0)
    for i in range(4):
        engine.add_request([10 + i, 20, 21, 22, 23], one)
    assert [len(engine.step()), len(engine.step())] == [3, 1]
    # max_num_batched_tokens: 10-token prompts, two fit in 25 tokens
    for i in range(3):
        engine.add_request([30 + i, *range(40, 49)], one)
    assert [len(engine.step()), len(engine.step())] == [2, 1]
    assert not engine.has_work()
    # prefill_chunk_tokens: while a sequence decodes, a 20-token prompt is prefilled in
    # chunks of 12 (no token after the first), a decode step between them
    engine.add_request([50, 51], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    engine.step()
    long = engine.add_request(list(range(60, 80)), one)
    engine.step()  # a decode step follows every prefill step
    assert engine.step() == [] and long.num_computed_tokens == 12
    assert [o.seq_id for o in engine.step()] != [long.seq_id]  # the decode step
    assert [o.seq_id for o in engine.step()] == [long.seq_id]  # the last 8 tokens

    monkeypatch.setenv("GLASSBOX_DTYPE", "float32")
    engine, _ = load_engine(Settings())
    assert {lin.fmt for lin in linears(engine.model)} == {"float32"}
    assert {lin.weight.dtype for lin in linears(engine.model)} == {torch.float32}


def test_log_settings_reach_the_configured_logging(monkeypatch, capsys, restore_logging) -> None:
    set_env(monkeypatch, log_json="false", log_level="DEBUG")
    serve_command(monkeypatch)
    assert logging.getLogger().level == logging.DEBUG
    capsys.readouterr()
    get_logger("glassbox.test").debug("console line", answer=42)
    [line] = capsys.readouterr().err.splitlines()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the console renderer's colours
    assert re.fullmatch(r"\S+Z \[debug\s*\] console line\s+\[glassbox.test\] answer=42", plain)
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)

    set_env(monkeypatch, log_json="true", log_level="ERROR")
    serve_command(monkeypatch)
    assert logging.getLogger().level == logging.ERROR
    capsys.readouterr()
    log = get_logger("glassbox.test")
    log.warning("not shown")
    log.error("json line", answer=42)
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["event"], record["answer"], record["level"]) == ("json line", 42, "error")


@pytest.mark.parametrize(
    ("env_aliases", "flags", "alias", "target"),
    [
        ({"gpt-4o-mini": "some-other-model"}, [], "gpt-4o-mini", "some-other-model"),
        ({"gpt-4o-mini": SERVED}, ["--model-alias", "x=elsewhere"], "x", "elsewhere"),
    ],
)
def test_an_alias_pointing_elsewhere_refuses_start_up(
    tiny_model_dir,
    tmp_path,
    monkeypatch,
    capsys,
    restore_logging,
    env_aliases,
    flags,
    alias,
    target,
) -> None:
    set_env(
        monkeypatch,
        model=str(tiny_model_dir),
        served_model_name=SERVED,
        model_aliases=env_aliases,
        cache_dir=str(tmp_path),
        dtype="float32",
        warm_features="false",
        log_level="WARNING",
    )
    app = serve_command(monkeypatch, *flags)["app"]
    message = (
        f"model alias '{alias}' points to '{target}', which this server does not serve; "
        f"point aliases at one of '{SERVED}'"
    )

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ValueError, match=message):
        asyncio.run(start())
    # served by uvicorn: the start-up fails, its log says why, and uvicorn exits with 3
    exits: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: exits.append(args.exc_value))
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="did not start"):
        with serve_in_thread(app):
            pass
    assert message in capsys.readouterr().err
    assert [(type(e), e.code) for e in exits] == [(SystemExit, 3)]
