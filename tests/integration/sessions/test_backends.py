"""Sessions on a model that another backend serves: an OpenAIUpstreamBackend whose upstream
is a live glassbox server (the tiny model). Every turn sends the whole conversation; a
variant is refused; emotions modulate the sampling sent upstream; response_format is
enforced upstream; the context policy applies with the model's context length."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from helpers.server import TINY_MAX_LEN, running, tiny_settings

from glassbox.backends.base import InferenceEngine
from glassbox.backends.openai_upstream import OpenAIUpstreamBackend
from glassbox.config import ModelSpec, UpstreamSpec
from glassbox.errors import InvalidRequest, ModelNotFound, NotCapable
from glassbox.principal import LOCAL
from glassbox.requests.registry import ModelRegistry, ServedModel
from glassbox.sessions.service import SUMMARY_INSTRUCTION, SessionSettings

UPSTREAM = "upstream-tiny"
GREEDY = {"temperature": 0.0, "max_tokens": 6}
MOOD = {"type": "object", "properties": {"mood": {"enum": ["calm", "busy"]}}, "required": ["mood"]}
MOOD_FORMAT = {"type": "json_schema", "json_schema": {"name": "mood", "schema": MOOD}}


@pytest.fixture
async def upstream(tiny_server):
    """The backend, on the live tiny server; `upstream.sent`: the bodies it sent."""
    sent: list[dict] = []

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    client = httpx.AsyncClient(timeout=60, event_hooks={"request": [record]})
    backend = OpenAIUpstreamBackend(
        base_url=tiny_server.base_url + "/v1",
        model=tiny_server.settings.served_model_name,
        client=client,
    )
    backend.sent = sent
    yield backend
    await backend.aclose()
    await client.aclose()


@pytest.fixture
def sessions(services, upstream, local_engine):
    engine, _ = local_engine
    other = ServedModel(UPSTREAM, "openai-upstream", TINY_MAX_LEN, frozenset(), ("up",))
    models = ModelRegistry("local-tiny", {}, engine.max_model_len, [other])
    return services.service(models=models, backends={UPSTREAM: upstream})


def upstream_settings(**fields) -> SessionSettings:
    return SessionSettings(**{"model": UPSTREAM, "sampling": GREEDY, **fields})


async def test_a_conversation_sends_the_whole_history_every_turn(
    sessions, upstream, tiny_server
) -> None:
    first = await sessions.start(
        LOCAL, "u-up", "hello there", upstream_settings(system_prompt="be brief")
    )
    sid = first.session.session_id
    second = await sessions.send(LOCAL, sid, "how are you")
    *pieces, third = [p async for p in sessions.stream(LOCAL, sid, "and now?")]
    assert "".join(pieces) == third.reply.content
    history = await sessions.history(LOCAL, sid)
    assert [m.sender for m in history] == ["user", "assistant"] * 3
    assert [m.content for m in history] == [
        "hello there", first.reply.content, "how are you", second.reply.content, "and now?",
        third.reply.content,
    ]  # fmt: skip
    system = {"role": "system", "content": "be brief"}
    bodies = upstream.sent
    assert len(bodies) == 3
    assert bodies[1]["messages"] == [
        system,
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first.reply.content},
        {"role": "user", "content": "how are you"},
    ]
    assert bodies[2]["messages"] == [
        *bodies[1]["messages"],
        {"role": "assistant", "content": second.reply.content},
        {"role": "user", "content": "and now?"},
    ]
    for body in bodies:
        assert body["model"] == tiny_server.settings.served_model_name and body["stream"]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 6
    # the reply is the upstream's answer to that body
    async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=60) as http:
        r = await http.post("/v1/chat/completions", json={**bodies[1], "stream": False})
    assert r.json()["choices"][0]["message"]["content"] == second.reply.content
    session = third.session
    assert session.model == UPSTREAM and session.state_id is None
    assert session.message_count == 6 and session.fence > second.session.fence
    for turn in (first, second, third):  # the text interface reports no token counts
        assert turn.prompt_tokens is turn.cached_tokens is turn.completion_tokens is None
    assert (await sessions.get(LOCAL, sid)).model == UPSTREAM


@pytest.mark.parametrize(
    "variant",
    [
        {"variant": {"base_model": "tiny", "edits": []}},
        {"variant_namespace": "ns", "variant_id": "v1"},
    ],
)
async def test_a_variant_is_refused_before_the_session_exists(sessions, upstream, variant) -> None:
    with pytest.raises(NotCapable) as refused:
        await sessions.start(LOCAL, "u-variant", "hi", upstream_settings(**variant))
    assert refused.value.param == "variant"
    assert "'openai-upstream'" in refused.value.message
    assert "'steering'" in refused.value.message
    assert sessions.list(LOCAL, "u-variant", 10, 0)[1] == 0
    assert upstream.sent == []


async def test_unknown_models_and_bad_formats_are_refused(sessions, upstream) -> None:
    with pytest.raises(ModelNotFound):
        await sessions.start(LOCAL, "u-bad", "hi", SessionSettings(model="no-such-model"))
    with pytest.raises(InvalidRequest) as refused:
        await sessions.start(
            LOCAL, "u-bad", "hi", upstream_settings(response_format={"type": "xml"})
        )
    assert refused.value.param == "response_format"
    with pytest.raises(InvalidRequest) as refused:
        await sessions.start(LOCAL, "u-bad", "hi", upstream_settings(sampling={"seed": 1}))
    assert refused.value.param == "seed" and "'openai-upstream'" in refused.value.message
    assert sessions.list(LOCAL, "u-bad", 10, 0)[1] == 0
    assert upstream.sent == []


async def test_an_alias_names_the_session_as_asked(sessions, upstream) -> None:
    turn = await sessions.start(LOCAL, "u-alias", "hi", upstream_settings(model="up"))
    assert turn.session.model == "up" and len(upstream.sent) == 1


async def test_emotions_modulate_the_sampling_sent_upstream(sessions, upstream) -> None:
    cases = [
        ((-1, -1), {}),
        ((0, 0), {}),
        ((1, 1), {}),
        ((1, -1), {"temperature": 0.5, "top_p": 0.95}),  # the session's own values, modulated
        (None, {"temperature": 0.5, "top_p": 0.95}),
    ]
    for emotion, sampling in cases:
        state = None if emotion is None else {"valence": emotion[0], "arousal": emotion[1]}
        settings = upstream_settings(emotional_state=state, sampling={"max_tokens": 3, **sampling})
        await sessions.start(LOCAL, "u-mood", "hello", settings)
    sent = [(b["temperature"], b["top_p"]) for b in upstream.sent]
    # the backend's defaults are 0.7 and 0.9; temperature + 0.3 arousal, top_p + 0.1 valence
    expected = [(0.4, 0.8), (0.7, 0.9), (1.0, 1.0), (0.2, 1.0), (0.5, 0.95)]
    assert sent == [pytest.approx(e) for e in expected]


async def test_every_reply_follows_the_response_format_upstream(sessions, upstream) -> None:
    settings = upstream_settings(response_format=MOOD_FORMAT, sampling={"max_tokens": 40})
    first = await sessions.start(LOCAL, "u-json", "how do you feel?", settings)
    replies = [first.reply.content]
    for text in ("and now?", "and later?"):
        replies.append((await sessions.send(LOCAL, first.session.session_id, text)).reply.content)
    for reply in replies:
        assert json.loads(reply)["mood"] in ("calm", "busy")
    assert [b["response_format"] for b in upstream.sent] == [MOOD_FORMAT] * 3


async def test_the_context_policy_applies_with_the_models_length(sessions, upstream) -> None:
    """The upstream's context is 512 tokens (the same tokenizer: the estimate is exact here);
    the oldest turns are dropped and summarized by the upstream itself."""
    settings = upstream_settings(system_prompt="be brief", context_policy="summarize")
    first = await sessions.start(LOCAL, "u-long", "first message " * 4, settings)
    sid = first.session.session_id
    for i in range(12):
        turn = await sessions.send(LOCAL, sid, f"message {i} " + "words " * 12)
    session = turn.session
    assert session.context_start > 0 and session.context_start % 2 == 0
    assert session.summary
    summaries = [b for b in upstream.sent if b["messages"][0]["content"] == SUMMARY_INSTRUCTION]
    assert summaries and all(b["temperature"] == 0.0 for b in summaries)
    last = upstream.sent[-1]["messages"]
    assert last[0]["role"] == "system" and last[0]["content"].startswith("be brief")
    assert "Summary of the conversation so far" in last[0]["content"]
    history = await sessions.history(LOCAL, sid)
    assert len(history) == 26  # the history keeps every message
    assert last[1]["content"] == history[session.context_start].content  # the rest follows


def test_sessions_on_an_upstream_model_over_http(tiny_server, tiny_model_dir, tmp_path) -> None:
    """A server whose `models` list an OpenAI-compatible upstream (the live tiny server)."""
    settings = tiny_settings(tiny_model_dir, tmp_path / "cache")
    upstream = UpstreamSpec(
        base_url=tiny_server.base_url + "/v1", model=tiny_server.settings.served_model_name
    )
    settings.models = [ModelSpec(name=UPSTREAM, backend="openai-upstream", upstreams=[upstream],
                                 max_model_len=TINY_MAX_LEN)]  # fmt: skip
    with running(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        body = {"user_id": "u-http", "initial_message": "hello there", "model": UPSTREAM,
                "temperature": 0, "max_tokens": 6}  # fmt: skip
        r = http.post("/llm/chat/", json=body)
        assert r.status_code == 200, r.text
        started = r.json()
        assert started["session"]["model"] == UPSTREAM and started["session"]["state_id"] is None
        assert started["usage"] == {
            "prompt_tokens": None, "cached_tokens": None, "completion_tokens": None
        }  # fmt: skip
        sid = started["session_id"]
        r = http.post(f"/llm/chat/{sid}/message/", json={"user_message": "how are you"})
        assert r.status_code == 200, r.text
        assert r.json()["session"]["message_count"] == 4
        history = http.get(f"/llm/chat/{sid}/history/").json()
        assert [m["sender"] for m in history] == ["user", "assistant"] * 2
        listed = http.get("/llm/chat/sessions/", params={"user_id": "u-http"}).json()
        assert [s["model"] for s in listed["data"]] == [UPSTREAM]
        r = http.post("/llm/chat/", json={**body, "variant": {"base_model": "x", "edits": []}})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "variant"
        assert "openai-upstream" in error["message"] and "steering" in error["message"]
        r = http.post("/llm/chat/", json={**body, "model": "no-such-model"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        local = http.post("/llm/chat/", json={**body, "model": None}).json()
        assert local["session"]["model"] == server.settings.served_model_name
        assert local["usage"]["prompt_tokens"] > 0 and local["session"]["state_id"]


class NulUpstream(InferenceEngine):
    """A backend whose model wrote the byte 0x00 (an upstream engine relays it as is); a fake
    beside the tests above against a live upstream, which never sends NUL."""

    def chat_completion_stream(self, messages, *args, **kwargs) -> AsyncIterator[str]:
        async def pieces() -> AsyncIterator[str]:
            yield "a\x00"
            yield "b"

        return pieces()


async def test_nul_from_another_backend_is_stored_and_streamed_as_u_fffd(
    services, local_engine
) -> None:
    engine, _ = local_engine
    other = ServedModel(UPSTREAM, "openai-upstream", TINY_MAX_LEN, frozenset(), ("up",))
    models = ModelRegistry("local-tiny", {}, engine.max_model_len, [other])
    sessions = services.service(models=models, backends={UPSTREAM: NulUpstream()})
    first = await sessions.start(LOCAL, "u-nul", "hello", upstream_settings())
    assert first.reply.content == "a\ufffdb"
    sid = first.session.session_id
    *pieces, turn = [p async for p in sessions.stream(LOCAL, sid, "again")]
    assert pieces == ["a\ufffd", "b"] and turn.reply.content == "a\ufffdb"
    history = await sessions.history(LOCAL, sid)
    assert [m.content for m in history] == ["hello", "a\ufffdb", "again", "a\ufffdb"]
