"""glassbox.client against a live tiny server: every method, errors as exceptions, and the
states demo script end to end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.server import LiveServer

from glassbox.client import Client, GlassboxError, NotFoundError

TEXT = "the quick brown fox jumps over the lazy dog and then the dog runs after the fox"
DEMO = Path(__file__).parents[3] / "examples" / "states_demo.py"


@pytest.fixture
async def c(tiny_server: LiveServer) -> AsyncIterator[Client]:
    async with Client(tiny_server.base_url, timeout=60) as client:
        yield client


async def test_create_get_list_iterate_delete(c: Client) -> None:
    s = await c.create_state(text=TEXT, config={"temperature": 0.5, "seed": 9})
    assert s["object"] == "state" and s["config"] == {"temperature": 0.5, "top_p": 1.0, "seed": 9}
    assert (await c.get_state(s["id"]))["token_ids"] == s["token_ids"]
    chat = await c.create_state(messages=[{"role": "user", "content": "hi"}])
    assert "hi" in chat["text"]

    page = await c.list_states(limit=1, after=s["id"])
    assert [d["id"] for d in page["data"]] == [chat["id"]]
    children = [(await c.fork_state(s["id"]))["id"] for _ in range(5)]
    page = await c.list_states(limit=2, parent_id=s["id"])
    assert [d["id"] for d in page["data"]] == children[:2] and page["has_more"]
    assert [d["id"] async for d in c.iter_states(parent_id=s["id"], page_size=2)] == children
    everything = [d["id"] async for d in c.iter_states(page_size=3)]
    assert {s["id"], chat["id"], *children} <= set(everything)
    assert len(everything) == len(set(everything))

    for child in children:
        await c.delete_state(child)
    assert await c.delete_state(s["id"]) == {
        "object": "state.deleted",
        "id": s["id"],
        "deleted": True,
    }
    with pytest.raises(NotFoundError) as info:
        await c.get_state(s["id"])
    assert info.value.status == 404 and info.value.code == "state_not_found"
    assert info.value.param == "state_id" and s["id"] in info.value.message
    with pytest.raises(NotFoundError):
        await c.delete_state(s["id"])


async def test_server_errors_become_exceptions(c: Client) -> None:
    with pytest.raises(GlassboxError) as info:
        await c.create_state()
    assert info.value.status == 400 and not isinstance(info.value, NotFoundError)
    assert info.value.type == "invalid_request_error" and "text" in info.value.message
    with pytest.raises(NotFoundError):
        await c.create_state(text="a", model_id="no-such-model")
    s = await c.create_state(text=TEXT)
    with pytest.raises(GlassboxError) as info:
        await c.rollback(s["id"])
    assert info.value.status == 400
    with pytest.raises(NotFoundError):
        await c.generate("nope")
    with pytest.raises(NotFoundError):
        async for _ in c.stream("nope"):
            pass
    with pytest.raises(NotFoundError) as info:
        await c.token_analysis("nope")
    assert info.value.code == "state_not_found"
    with pytest.raises(GlassboxError) as info:
        await c.attention(s["id"], layer=99)
    assert info.value.status == 400 and info.value.param == "layer"
    with pytest.raises(GlassboxError) as info:
        await c.import_state(data=b"not a state file at all")
    assert info.value.code == "invalid_state_file"
    with pytest.raises(ValueError):
        await c.import_state()


async def test_fork_checkpoints_rollback_history(c: Client) -> None:
    s = await c.create_state(text=TEXT)
    head = await c.fork_state(s["id"], token_index=5)
    assert head["parent_id"] == s["id"] and head["token_ids"] == s["token_ids"][:5]
    fork = await c.fork_state(s["id"])
    marked = await c.add_checkpoint(fork["id"], "start", token_index=6)
    assert marked["checkpoints"] == {"start": 6}
    assert (await c.rollback(fork["id"], token_index=8))["num_tokens"] == 8
    assert (await c.rollback(fork["id"], checkpoint="start"))["token_ids"] == s["token_ids"][:6]
    assert [h["id"] for h in await c.history(fork["id"])] == [fork["id"], s["id"]]


async def test_generate_stream_commit_diff_merge(c: Client) -> None:
    s = await c.create_state(text=TEXT)
    a = await c.generate(s["id"], max_tokens=8, temperature=1.0, top_p=0.9, seed=3, logprobs=2)
    b = await c.generate(s["id"], max_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert a["text"] == b["text"] and len(a["tokens"]) == 8 and a["child_state_id"] is None
    assert all(len(t["top_logprobs"]) == 2 for t in a["tokens"])

    events = [
        e
        async for e in c.stream(
            s["id"], max_tokens=8, temperature=1.0, top_p=0.9, seed=3, logprobs=2, commit=True
        )
    ]
    tokens, last = events[:-1], events[-1]
    assert [e["token_id"] for e in tokens] == [t["token_id"] for t in a["tokens"]]
    assert "".join(e["text"] for e in tokens) == a["text"]
    assert last["finish_reason"] == "length" and last["usage"]["completion_tokens"] == 8
    streamed_child = await c.get_state(last["child_state_id"])
    assert streamed_child["text"].endswith(a["text"])

    stopped = await c.generate(s["id"], max_tokens=8, temperature=0.0, stop_sequences=["the"])
    assert "the" not in stopped["text"]
    committed = await c.generate(s["id"], max_tokens=3, seed=4, commit=True)
    other = committed["child_state_id"]
    d = await c.diff(streamed_child["id"], other)
    assert d["common_ancestor_id"] == s["id"] and d["common_prefix_tokens"] >= s["num_tokens"]
    merged = await c.merge([streamed_child["id"], other])
    assert merged["metadata"]["merged_from"] == [streamed_child["id"], other]


async def test_beam(c: Client) -> None:
    s = await c.create_state(text=TEXT)
    out = await c.beam(s["id"], num_beams=4, max_length=5, num_return_sequences=2, commit=True)
    assert out["object"] == "beam_search" and len(out["beams"]) == 2
    assert out["beams"][0]["score"] >= out["beams"][1]["score"]
    child = await c.get_state(out["child_state_id"])
    assert child["token_ids"] == s["token_ids"] + out["beams"][0]["token_ids"]
    diverse = await c.beam(
        s["id"], num_beams=4, max_length=4, num_beam_groups=2, diversity_penalty=1.0,
        num_return_sequences=4, length_penalty=0.5, no_repeat_ngram_size=2, early_stopping=True,
    )  # fmt: skip
    assert {b["group"] for b in diverse["beams"]} == {0, 1}
    with pytest.raises(GlassboxError) as info:
        await c.beam(s["id"], num_beams=3, num_beam_groups=2)
    assert info.value.status == 400
    with pytest.raises(NotFoundError):
        await c.beam("nope")


async def test_export_and_import(c: Client) -> None:
    s = await c.create_state(text=TEXT, config={"seed": 11})
    expected = (await c.generate(s["id"], max_tokens=6))["text"]
    exported = await c.export_state(s["id"], name="client-test")
    assert exported["name"] == "client-test" and exported["bytes"] > 0
    by_name = await c.import_state(name="client-test")
    data = await c.download_state(s["id"])
    by_bytes = await c.import_state(data=data)
    for copy in (by_name, by_bytes):
        assert copy["metadata"]["imported_from"] == s["id"] and copy["id"] != s["id"]
        assert (await c.generate(copy["id"], max_tokens=6))["text"] == expected
    named = await c.export_state(s["id"])  # the server names the file
    assert named["bytes"] > 0
    names = {e["name"] for e in await c.list_exports()}
    assert {"client-test", named["name"]} <= names
    for name in ("client-test", named["name"]):
        await c.delete_export(name)
    assert not {"client-test", named["name"]} & {e["name"] for e in await c.list_exports()}
    with pytest.raises(NotFoundError):
        await c.delete_export("client-test")


async def test_analysis(c: Client, tiny_server: LiveServer) -> None:
    s = await c.create_state(text="the quick brown fox jumps over the lazy dog")
    tokens = await c.token_analysis(s["id"], top_k=3)
    assert [t["token_id"] for t in tokens["tokens"]] == s["token_ids"][1:]
    assert all(len(t["top"]) == 3 for t in tokens["tokens"]) and tokens["perplexity"] > 1

    att = await c.attention(s["id"], layer=1, head=0, threshold=0.1, normalized=True)
    assert att["layer"] == 1 and att["head"] == 0 and len(att["weights"]) == s["num_tokens"]
    assert all(e["weight"] >= 0.1 for e in att["entries"])
    png = await c.attention_png(s["id"], layer=0)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    layers = tiny_server.engine.model_config.num_layers
    cache = await c.cache_analysis(s["id"])
    assert cache["layer_range"] == [0, layers] and len(cache["layers"]) == layers
    one = await c.cache_analysis(s["id"], layer_range=(1, 2))
    assert one["layer_range"] == [1, 2] and len(one["layers"]) == 1
    assert one["num_tokens"] == s["num_tokens"] - 1


def test_demo_script_runs_end_to_end(tiny_server: LiveServer, tmp_path: Path) -> None:
    png = tmp_path / "attention.png"
    run = subprocess.run(
        [sys.executable, str(DEMO), "--url", tiny_server.base_url, "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "(same text: True)" in out
    assert "the copies continue like the original: True" in out
    assert "cleanup: deleted 5 states" in out
    assert png.read_bytes().startswith(b"\x89PNG")
