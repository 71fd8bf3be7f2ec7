"""/llm/chat sessions against a live server: the reference's routes, warm KV between turns,
one turn at a time, owners, a restart."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest
from helpers.server import running, tiny_settings

from glassbox.errors import Conflict

SAMPLING = {"temperature": 0.0, "max_tokens": 6}


def start(http: httpx.Client, message: str = "hello there", **extra) -> dict:
    body = {"user_id": "u-1", "initial_message": message, **SAMPLING, **extra}
    r = http.post("/llm/chat/", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def send(http: httpx.Client, session_id: str, message: str) -> dict:
    r = http.post(f"/llm/chat/{session_id}/message/", json={"user_message": message})
    assert r.status_code == 200, r.text
    return r.json()


def history(http: httpx.Client, session_id: str) -> list[dict]:
    r = http.get(f"/llm/chat/{session_id}/history/")
    assert r.status_code == 200, r.text
    return r.json()


def test_a_conversation_through_the_reference_routes(http: httpx.Client) -> None:
    first = start(http)
    sid = first["session_id"]
    assert isinstance(first["message"], str)
    assert first["session"]["message_count"] == 2 and first["session"]["state_id"]
    second = send(http, sid, "how are you")
    assert second["updated_session"] == sid
    assert second["session"]["message_count"] == 4
    messages = history(http, sid)
    assert [m["sender"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["hello there", "how are you"]
    assert messages[1]["content"] == first["message"]
    assert messages[3]["content"] == second["response_message"]
    assert all(m["session_id"] == sid and m["message_id"] for m in messages)
    stamps = [m["timestamp"] for m in messages]
    assert stamps == sorted(stamps)
    listed = http.get("/llm/chat/sessions/", params={"user_id": "u-1"}).json()
    assert sid in [s["session_id"] for s in listed["data"]]
    ended = http.delete(f"/llm/chat/{sid}/")
    assert ended.status_code == 200 and ended.json()["deleted"] is True
    for r in (http.get(f"/llm/chat/{sid}/history/"),
              http.post(f"/llm/chat/{sid}/message/", json={"user_message": "x"}),
              http.delete(f"/llm/chat/{sid}/")):  # fmt: skip
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    # the session's state went with it
    assert http.get(f"/states/{second['session']['state_id']}").status_code == 404


def test_a_turn_computes_only_the_new_tokens(http: httpx.Client) -> None:
    first = start(http, "the quick brown fox")
    sid = first["session_id"]
    previous = first
    for text in ["jumps over", "the lazy dog", "and runs"]:
        turn = send(http, sid, text)
        usage = turn["usage"]
        # Everything up to the last reply's last token came warm from the session's state
        # (a state holds the KV of all its tokens but the last); computed: the new message
        # and the template around it (this tokenizer spends about a token per character).
        known = previous["usage"]["prompt_tokens"] + previous["usage"]["completion_tokens"]
        assert usage["cached_tokens"] >= known - 1
        assert usage["prompt_tokens"] - usage["cached_tokens"] <= len(text) + 30
        previous = turn


def test_a_session_whose_state_is_gone_is_recomputed(http: httpx.Client) -> None:
    first = start(http)
    sid = first["session_id"]
    assert http.delete(f"/states/{first['session']['state_id']}").status_code == 200
    turn = send(http, sid, "still there?")
    assert turn["session"]["message_count"] == 4
    assert turn["usage"]["cached_tokens"] < turn["usage"]["prompt_tokens"]
    assert len(history(http, sid)) == 4


def test_two_messages_at_once_are_served_one_after_the_other(http: httpx.Client) -> None:
    sid = start(http)["session_id"]
    texts = [f"message number {i}" for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda t: send(http, sid, t), texts))
    messages = history(http, sid)
    assert len(messages) == 2 + 2 * len(texts)
    assert [m["sender"] for m in messages] == ["user", "assistant"] * (1 + len(texts))
    asked = [m["content"] for m in messages[2::2]]
    assert sorted(asked) == sorted(texts)  # none lost, none twice
    for text, reply in zip(texts, replies, strict=True):  # each reply follows its message
        [at] = [i for i, m in enumerate(messages) if m["sender"] == "user" and m["content"] == text]
        assert messages[at + 1]["content"] == reply["response_message"]
        assert reply["session"]["message_count"] == at + 2


def test_the_stream_sends_pieces_then_the_turn(http: httpx.Client) -> None:
    sid = start(http)["session_id"]
    events = []
    with http.stream("POST", f"/llm/chat/{sid}/message/",
                     json={"user_message": "tell me more", "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    *pieces, last = events
    assert "".join(p["delta"] for p in pieces) == last["response_message"]
    assert history(http, sid)[-1]["content"] == last["response_message"]


def test_every_reply_follows_the_response_format(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "busy"]}},
              "required": ["mood"]}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "m", "schema": schema}}
    first = start(http, response_format=fmt, max_tokens=40)
    assert json.loads(first["message"])["mood"] in ("calm", "busy")
    turn = send(http, first["session_id"], "and now?")
    assert json.loads(turn["response_message"])["mood"] in ("calm", "busy")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user_id": "u", "initial_message": ""}, "initial_message"),
        ({"initial_message": "hi"}, "user_id"),
        ({"user_id": "u", "initial_message": "hi", "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
         "response_format"),
        ({"user_id": "u", "initial_message": "hi", "temperature": 5}, "temperature"),
    ],
)  # fmt: skip
def test_bad_sessions_are_400s_and_leave_nothing(http: httpx.Client, body, param) -> None:
    before = http.get("/llm/chat/sessions/", params={"user_id": "u"}).json()["total"]
    r = http.post("/llm/chat/", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert http.get("/llm/chat/sessions/", params={"user_id": "u"}).json()["total"] == before


def test_sessions_are_listed_per_user_and_paged(http: httpx.Client) -> None:
    ids = [start(http, user_id="pager")["session_id"] for _ in range(3)]
    page = http.get("/llm/chat/sessions/", params={"user_id": "pager", "limit": 2}).json()
    assert page["total"] == 3 and len(page["data"]) == 2
    rest = http.get("/llm/chat/sessions/",
                    params={"user_id": "pager", "limit": 2, "offset": 2}).json()  # fmt: skip
    assert {s["session_id"] for s in page["data"] + rest["data"]} == set(ids)


def test_a_restart_keeps_sessions_and_their_warm_start(tiny_model_dir, tmp_path) -> None:
    settings = tiny_settings(tiny_model_dir, tmp_path / "cache")
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        first = start(http)
        second = send(http, first["session_id"], "one more")
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        sid = first["session_id"]
        assert len(history(http, sid)) == 4
        turn = send(http, sid, "after the restart")
        known = second["usage"]["prompt_tokens"] + second["usage"]["completion_tokens"]
        # warm from the state's file (this random model's replies may end inside a UTF-8
        # character, whose last tokens the next prompt's text no longer has)
        assert turn["usage"]["cached_tokens"] >= known - 4


@pytest.mark.parametrize("policy", ["truncate_oldest", "summarize"])
def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(
    http: httpx.Client, policy: str
):
    """The tiny model's context is 512 tokens, about as many characters."""
    system = "be brief"
    first = start(http, "first message " * 4, system_prompt=system, context_policy=policy)
    sid = first["session_id"]
    starts, usages = [], []
    for i in range(12):
        turn = send(http, sid, f"message {i} " + "words " * 12)
        starts.append(turn["session"]["context_start"])
        usages.append(turn["usage"])
        assert turn["usage"]["prompt_tokens"] + 6 <= 512
    assert starts[-1] > 0 and starts[-1] % 2 == 0  # pairs dropped
    assert starts == sorted(starts)
    # Dropped at once to half the context: the start then stays put for several turns.
    kept = [k for k in range(1, 12) if starts[k] == starts[k - 1] != 0]
    assert kept
    for k in kept:  # and the turns after a truncation are warm again (less a reply's last
        # tokens when this random model cut it inside a UTF-8 character: builder.TAIL_TOKENS)
        known = usages[k - 1]["prompt_tokens"] + usages[k - 1]["completion_tokens"]
        assert usages[k]["cached_tokens"] >= known - 8
    messages = history(http, sid)
    assert len(messages) == 2 + 2 * 12  # the history keeps every message
    assert messages[0]["content"] == "first message " * 4
    session = send(http, sid, "last one")["session"]
    if policy == "summarize":  # the dropped turns live on as the model's summary
        assert session["summary"]
    else:
        assert session["summary"] is None


def test_a_turn_whose_lock_was_lost_cannot_store(tiny_server, http: httpx.Client) -> None:
    """The fence: a turn holding an older token than the last stored turn's is refused."""
    sid = start(http)["session_id"]
    sessions = tiny_server.app.state.sessions
    with pytest.raises(Conflict):
        sessions._store_turn(sid, 2, "late", "late reply", None, 0, None, token=1)
    assert [m["content"] for m in history(http, sid)].count("late") == 0
