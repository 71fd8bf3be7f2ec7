"""Chat sessions keep a conversation warm: time to first token per turn, a session against
the same conversation sent whole each turn.

Starts `glassbox serve` (bundled model) on a loopback port and holds one 10-turn
conversation (--turns) two ways, turn by turn:

- session: `POST /llm/chat/` for turn 1, then `POST /llm/chat/{id}/message/` with
  `stream: true`; only the new message and the template around it are computed;
- whole: `/v1/chat/completions` (streaming) with every message so far, the assistant turns
  being the session's own replies: the prompt grows with the history. The engine's prefix
  cache keeps this warm too, for the full blocks up to the first place where a reply's text
  tokenizes differently from the tokens the model wrote (with the bundled model that is
  rare); the session does not depend on it.

Time to first token is the time to the first piece of the reply. Printed per turn for both,
and the figure: session turn 10 / session turn 2 (target <= 1.5), beside whole turn 10 /
whole turn 2. Greedy, --max-tokens per reply (default 64), best of --repeats per turn.

    .venv/bin/python benchmarks/sessions.py [--turns 10] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prompts import QUESTIONS

MODEL = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_piece(http: httpx.Client, path: str, body: dict) -> tuple[float, list[dict]]:
    """Seconds to the first non-empty piece of a streamed reply, and every event."""
    t0 = time.perf_counter()
    ttft = None
    events = []
    with http.stream("POST", path, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            events.append(event)
            text = event.get("delta")
            if text is None and event.get("choices"):
                text = event["choices"][0]["delta"].get("content")
            if text and ttft is None:
                ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else time.perf_counter() - t0), events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="conversations; best per turn")
    args = parser.parse_args()

    from glassbox.models.kernels import describe_cpu

    print(describe_cpu())
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GLASSBOX_WARM_FEATURES": "false",
               "GLASSBOX_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.db'}",
               "GLASSBOX_STATES_DIR": str(Path(tmp) / "states")}  # fmt: skip
        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "glassbox.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            run(f"http://127.0.0.1:{port}", server, args)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def run(url: str, server: subprocess.Popen, args: argparse.Namespace) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError("glassbox serve exited")
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        session_ttft = [[] for _ in range(args.turns)]
        whole_ttft = [[] for _ in range(args.turns)]
        for repeat in range(args.repeats):
            questions = QUESTIONS[repeat : repeat + args.turns]
            sampling = {"temperature": 0.0, "max_tokens": args.max_tokens}
            messages: list[dict] = []
            session_id = None
            for turn, question in enumerate(questions):
                if session_id is None:
                    t0 = time.perf_counter()
                    r = http.post(
                        "/llm/chat/",
                        json={"user_id": "bench", "initial_message": question, **sampling},
                    )
                    r.raise_for_status()
                    ttft = time.perf_counter() - t0  # not streamed: the whole first turn
                    session_id, reply = r.json()["session_id"], r.json()["message"]
                else:
                    ttft, events = first_piece(
                        http,
                        f"/llm/chat/{session_id}/message/",
                        {"user_message": question, "stream": True},
                    )
                    reply = events[-1]["response_message"]
                session_ttft[turn].append(ttft)
                messages.append({"role": "user", "content": question})
                body = {"model": MODEL, "messages": messages, "stream": True, **sampling}
                whole, _ = first_piece(http, "/v1/chat/completions", body)
                whole_ttft[turn].append(whole)
                messages.append({"role": "assistant", "content": reply})
            http.delete(f"/llm/chat/{session_id}/")
        print(f"greedy, {args.max_tokens} tokens per reply; best of {args.repeats} per turn")
        print("turn  session TTFT  whole-conversation TTFT")
        best_s = [min(t) for t in session_ttft]
        best_w = [min(t) for t in whole_ttft]
        for turn in range(1, args.turns):
            print(f"{turn + 1:4d}  {best_s[turn] * 1e3:9.1f} ms  {best_w[turn] * 1e3:12.1f} ms")
        last = args.turns - 1
        print(
            f"session: turn {args.turns} / turn 2 = {best_s[last] / best_s[1]:.2f} "
            f"(target <= 1.5); whole conversation: {best_w[last] / best_w[1]:.2f}; "
            f"turn {args.turns}, whole / session = {best_w[last] / best_s[last]:.2f}"
        )


if __name__ == "__main__":
    main()
