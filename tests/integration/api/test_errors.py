"""Bad input is a 4xx in OpenAI's error shape, with a message that names what to fix."""

from __future__ import annotations

import openai
import pytest
from helpers.server import TINY_MAX_LEN, TINY_NAME, fail_after_first

USER = [{"role": "user", "content": "Hi"}]


def assert_error(r, status: int, *, param: str | None = None, says: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert says.lower() in error["message"].lower(), error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages.0.role", "robot"),
        ({"messages": USER, "max_tokens": -5}, "max_tokens", "greater than or equal to 1"),
        ({"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens", "1"),
        ({"messages": USER, "temperature": 3}, "temperature", "less than or equal to 2"),
        ({"messages": USER, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": USER, "n": 17}, "n", "16"),
        ({"messages": USER, "presence_penalty": 2.5}, "presence_penalty", "2"),
        ({"messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs", "20"),
        ({"messages": USER, "top_logprobs": 2}, None, "logprobs"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": USER, "stop": [""]}, "stop", "non-empty"),
        ({"messages": USER, "logit_bias": {"5": 101}}, "logit_bias.5", "100"),
        ({"messages": USER, "logit_bias": {"999999": 1}}, "logit_bias", "vocabulary"),
        ({"messages": USER, "stream_options": {"include_usage": True}}, None, "stream"),
        ({"messages": []}, "messages", "at least 1"),
        ({}, "messages", "required"),
        ({"messages": USER, "frobnicate": 1}, "frobnicate", "not a recognized"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None, "image_url"),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools.0.function", "required"),
        ({"messages": USER, "response_format": {"type": "json_schema"}}, None, "json_schema"),
        ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"properties": {"a": {"type": "strin"}}}}}},
         "response_format", "'/properties/a/type'"),
        ({"messages": USER, "tool_choice": "required"}, None, "'tool_choice' needs 'tools'"),
        ({"messages": USER, "guided_regex": "a", "guided_choice": ["a"]}, None, "one guided_*"),
    ],
)  # fmt: skip
def test_chat_validation_errors(http, body: dict, param: str | None, says: str) -> None:
    assert_error(http.post("/v1/chat/completions", json=body), 400, param=param, says=says)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": "x", "logprobs": 6}, "logprobs", "5"),
        ({"prompt": []}, "prompt", "empty"),
        ({"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
        ({"prompt": "x", "n": 1, "best_of": 2}, "best_of", "not supported"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo", "not supported"),
        ({"prompt": [1, 999999]}, "prompt", "vocabulary"),
    ],
)
def test_completion_validation_errors(http, body: dict, param: str | None, says: str) -> None:
    assert_error(http.post("/v1/completions", json=body), 400, param=param, says=says)


def test_invalid_json_is_400(http) -> None:
    r = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, says="json")


def test_prompt_longer_than_context(http) -> None:
    long = "Hello world " * TINY_MAX_LEN
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]})
    error = assert_error(r, 400, param="messages", says=f"maximum context length is {TINY_MAX_LEN}")
    assert error["code"] == "context_length_exceeded"
    r = http.post("/v1/completions", json={"prompt": long})
    assert_error(r, 400, param="prompt", says=str(TINY_MAX_LEN))


def test_prompt_plus_max_tokens_longer_than_context(http) -> None:
    count = http.post("/tokenize", json={"messages": USER}).json()["count"]
    too_many = TINY_MAX_LEN - count + 1
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": too_many})
    error = assert_error(r, 400, param="max_tokens", says=f"{count} in the prompt")
    assert f"at most {TINY_MAX_LEN - count}" in error["message"]
    ok = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": too_many - 1})
    assert ok.status_code == 200


def test_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY_NAME, messages=USER, temperature=3)
    assert info.value.param == "temperature"


def test_unknown_route_and_method(http) -> None:
    r = http.get("/v2/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_unexpected_exception_is_a_500_in_the_same_shape(http, tiny_server, monkeypatch) -> None:
    async def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_server.app.state.openai, "chat", broken)
    r = http.post("/v1/chat/completions", json={"messages": USER}, headers={"x-request-id": "e-1"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "e-1"
    error = r.json()["error"]
    assert error["type"] == "server_error" and "e-1" in error["message"]
    assert "boom" not in error["message"]  # internals stay in the log


def test_error_after_the_stream_started_is_reported_in_the_stream(http, tiny_server, monkeypatch):
    from glassbox.engine.errors import EngineDeadError

    openai_service = tiny_server.app.state.openai
    fail_after_first(
        monkeypatch, openai_service, "_chat_chunks",
        EngineDeadError("the engine has stopped"),
    )  # fmt: skip
    body = {"messages": USER, "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert len(events) == 2 and "[DONE]" not in events
    assert '"error"' in events[1] and "engine has stopped" in events[1]
