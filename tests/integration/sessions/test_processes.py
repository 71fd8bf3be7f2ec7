"""Two server processes sharing a real PostgreSQL and a real Redis serve one session: messages
sent to both at once are all stored, none twice, user and assistant strictly alternating."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import pytest
from helpers.pg_server import fresh_database
from helpers.processes import servers
from helpers.redis_server import running_redis


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_url) as url:
        yield url


def test_two_processes_serve_one_session(tiny_model_dir, tmp_path, database_url) -> None:
    with running_redis() as redis_url:
        env = {"GLASSBOX_DATABASE_URL": database_url, "GLASSBOX_REDIS_URL": redis_url}
        starts = [(tmp_path / name, tiny_model_dir, env) for name in "ab"]
        with servers(*starts) as (server_a, server_b):
            a, b = server_a.url, server_b.url
            body = {"user_id": "two", "initial_message": "hello", "temperature": 0,
                    "max_tokens": 5}  # fmt: skip
            r = httpx.post(a + "/llm/chat/", json=body, timeout=60)
            assert r.status_code == 200, r.text
            sid = r.json()["session_id"]
            texts = [f"message {i}" for i in range(6)]

            def send(i: int) -> dict:
                url = (a, b)[i % 2]
                r = httpx.post(f"{url}/llm/chat/{sid}/message/",
                               json={"user_message": texts[i]}, timeout=120)  # fmt: skip
                assert r.status_code == 200, r.text
                return r.json()

            with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
                replies = list(pool.map(send, range(len(texts))))
            histories = [httpx.get(f"{u}/llm/chat/{sid}/history/").json() for u in (a, b)]
            assert histories[0] == histories[1]
            messages = histories[0]
            assert [m["sender"] for m in messages] == ["user", "assistant"] * (1 + len(texts))
            asked = [m["content"] for m in messages[2::2]]
            assert sorted(asked) == sorted(texts)  # none lost, none twice
            for text, reply in zip(texts, replies, strict=True):
                [at] = [i for i, m in enumerate(messages) if m["content"] == text]
                assert messages[at + 1]["content"] == reply["response_message"]
