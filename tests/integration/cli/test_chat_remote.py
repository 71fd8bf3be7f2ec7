"""`glassbox chat --url`: the answer of a live server, streamed to stdout (the same as the
same request over HTTP), and the server's error message with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers.server import TINY_ALIAS, LiveServer, fail_after_first

from glassbox.cli import main

GLASSBOX = Path(sys.executable).with_name("glassbox")


def answer_over_http(http: httpx.Client, messages: list[dict], **fields) -> str:
    body = {"messages": messages, "max_tokens": 16, "temperature": 0, "seed": 7, **fields}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def chat(server: LiveServer, question: str, *flags: str) -> int:
    args = ["chat", question, "--url", server.base_url, "--max-tokens", "16"]
    return main([*args, "--temperature", "0", "--seed", "7", *flags])


def test_chat_prints_the_servers_answer(tiny_server: LiveServer, http: httpx.Client, capsys):
    expected = answer_over_http(http, [{"role": "user", "content": "Where is the harbour?"}])
    assert expected  # a greedy answer of the tiny model: not empty
    assert chat(tiny_server, "Where is the harbour?") == 0
    out = capsys.readouterr()
    assert out.out == expected + "\n" and out.err == ""


def test_chat_with_a_system_message_a_model_alias_and_a_v1_url(
    tiny_server: LiveServer, http: httpx.Client, capsys
) -> None:
    messages = [
        {"role": "system", "content": "Answer like a pirate"},
        {"role": "user", "content": "Hello"},
    ]
    expected = answer_over_http(http, messages, model=TINY_ALIAS, temperature=0.8)
    args = ["chat", "Hello", "--url", tiny_server.base_url + "/v1/", "--max-tokens", "16"]
    flags = ["--system", "Answer like a pirate", "--model", TINY_ALIAS, "--seed", "7"]
    assert main([*args, *flags, "--temperature", "0.8"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_a_server_error_is_printed_with_a_non_zero_exit(
    tiny_server: LiveServer, http: httpx.Client, capsys
) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert chat(tiny_server, "Hi", "--model", "no-such-model") == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"error 404: {message}\n"


def test_a_bad_value_is_the_servers_400(tiny_server: LiveServer, http: httpx.Client, capsys):
    body = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 5.0, "stream": True}
    message = http.post("/v1/chat/completions", json=body).json()["error"]["message"]
    args = ["chat", "Hi", "--url", tiny_server.base_url, "--temperature", "5"]
    assert main(args) == 1
    assert capsys.readouterr().err == f"error 400: {message}\n"


def test_an_error_in_the_stream_is_printed_with_a_non_zero_exit(
    tiny_server: LiveServer, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glassbox.engine.errors import EngineDeadError

    openai_service = tiny_server.app.state.openai
    fail_after_first(
        monkeypatch, openai_service, "_chat_chunks",
        EngineDeadError("the engine has stopped"),
    )  # fmt: skip
    assert chat(tiny_server, "Hi") == 1
    assert capsys.readouterr().err == "\nerror: the engine has stopped\n"


def test_the_installed_command_exits_non_zero_on_a_server_error(
    tiny_server: LiveServer, http: httpx.Client
) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}
    message = http.post("/v1/chat/completions", json=body).json()["error"]["message"]
    args = [str(GLASSBOX), "chat", "Hi", "--url", tiny_server.base_url, "--model", "no-such-model"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout == "" and done.stderr == f"error 404: {message}\n"

    args = [str(GLASSBOX), "chat", "Hi", "--url", tiny_server.base_url, "--max-tokens", "16"]
    done = subprocess.run([*args, "--temperature", "0", "--seed", "7"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    expected = answer_over_http(http, [{"role": "user", "content": "Hi"}])
    assert done.returncode == 0 and done.stdout == expected + "\n"
