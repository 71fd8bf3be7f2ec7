"""The glassbox command line: `features build` and `chat` in-process, `states` against a
live server."""

from __future__ import annotations

import json

from helpers.server import TINY_NAME

from glassbox.cli import main
from glassbox.features.concepts import load_concept_data


def test_features_build_writes_the_concept_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path))
    args = ["features", "build", "--model", str(tiny_model_dir), "--dtype", "float32"]
    assert main([*args, "--layer", "1"]) == 0
    out = capsys.readouterr().out
    n = len(load_concept_data().concepts)
    assert f"{n} concept vectors at layer 1" in out
    cached = list((tmp_path / "features").glob("*-concepts-L1-*.safetensors"))
    assert len(cached) == 1
    first = cached[0].stat().st_mtime_ns
    assert main([*args, "--layer", "1"]) == 0  # "build" always rebuilds
    assert cached[0].stat().st_mtime_ns > first


SEEDED = {"max_tokens": 8, "temperature": 1, "seed": 7}  # as the flags below ask


def served_answer(http, **sampling) -> str:
    """The answer the live tiny server gives to "Hello" (one chat message)."""
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hello"}], **sampling}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer.strip()  # something to compare
    return answer


def test_chat_in_process_streams_an_answer(tiny_model_dir, tmp_path, monkeypatch, capsys, http):
    """The answer printed is the one the server gives to the same seeded request."""
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path))
    args = ["chat", "Hello", "--model", str(tiny_model_dir), "--dtype", "float32"]
    assert main([*args, "--max-tokens", "8", "--temperature", "1", "--seed", "7"]) == 0
    assert capsys.readouterr().out == served_answer(http, **SEEDED) + "\n"


def test_chat_against_a_live_server_prints_its_answer(tiny_server, http, capsys):
    args = ["chat", "Hello", "--url", tiny_server.base_url, "--model", TINY_NAME]
    assert main([*args, "--max-tokens", "8", "--temperature", "1", "--seed", "7"]) == 0
    assert capsys.readouterr().out == served_answer(http, **SEEDED) + "\n"


def test_states_commands_against_a_live_server(tiny_server, http, tmp_path, capsys):
    state = http.post("/states", json={"text": "a state for the command line"}).json()
    url = ["states", "--url", tiny_server.base_url]
    assert main([*url, "list"]) == 0
    assert state["id"] in capsys.readouterr().out
    assert main([*url, "show", state["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == state["token_ids"]
    path = tmp_path / "kept.gbstate"
    assert main([*url, "export", state["id"], str(path)]) == 0 and path.stat().st_size > 0
    assert main([*url, "import", str(path)]) == 0
    new_id = capsys.readouterr().out.split("-> ")[-1].split()[0]
    assert http.get(f"/states/{new_id}").json()["token_ids"] == state["token_ids"]
    assert main([*url, "delete", new_id]) == 0
    assert http.get(f"/states/{new_id}").status_code == 404
    assert main([*url, "show", new_id]) == 1
    assert "404" in capsys.readouterr().err
