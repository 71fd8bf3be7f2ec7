"""The `glassbox` command: `serve` runs the HTTP server, `chat` asks one question,
`features build` (re)builds the concept vectors, `states` lists, shows, deletes, exports
and imports the KV states of a running server, `db` upgrades the database's schema,
`worker` runs the embedding job stages from Redis, `keys` creates, lists, updates and revokes
API keys.

Flags given on the command line override GLASSBOX_* environment variables (they are passed
to Settings as init arguments, which pydantic-settings ranks above the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glassbox.config import Settings

if TYPE_CHECKING:  # uvicorn is imported when serving, not for every command
    import uvicorn


def _alias(text: str) -> tuple[str, str]:
    alias, sep, target = text.partition("=")
    if not sep or not alias or not target:
        raise argparse.ArgumentTypeError(f"expected ALIAS=SERVED_NAME, got {text!r}")
    return alias, target


def _limit(text: str) -> int | str:
    """A per-minute limit on the command line: a count, or 'default'."""
    if text == "default":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or 'default', got '{text}'") from None


def _add_scopes(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--scope", action="append", choices=["admin", "user", "read"], dest="scopes", help=help
    )


def _settings(args: argparse.Namespace, keys: list[str]) -> Settings:
    explicit: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if getattr(args, "model_alias", None):
        explicit["model_aliases"] = dict(args.model_alias)
    return Settings(**explicit)


_MODEL_FLAGS = ["model", "dtype", "max_model_len", "kv_cache_bytes", "num_threads"]
_SERVE_FLAGS = [
    "host", "port", "served_model_name", "max_num_seqs", "log_level", *_MODEL_FLAGS,
]  # fmt: skip


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="'bundled', an HF model directory or a .gguf file")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "int8", "int4", "q4"])
    p.add_argument("--max-model-len", type=int, help="context length")
    p.add_argument("--kv-cache-bytes", type=int, help="memory for the paged KV pool")
    p.add_argument("--num-threads", type=int, help="torch intra-op threads")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glassbox", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--served-model-name", help="the name clients use")
    serve.add_argument(
        "--model-alias", action="append", type=_alias, metavar="ALIAS=SERVED_NAME",
        help="another name for the served model (repeatable)",
    )  # fmt: skip
    serve.add_argument("--max-num-seqs", type=int, help="most sequences in one decode step")
    serve.add_argument("--log-level")
    _add_model_flags(serve)

    chat = sub.add_parser("chat", help="stream the answer to one question")
    chat.add_argument("question")
    chat.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8000); "
                      "without it the model runs in this process")  # fmt: skip
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--seed", type=int)
    _add_model_flags(chat)

    features = sub.add_parser("features", help="feature dictionaries")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    build = features_sub.add_parser(
        "build", help="(re)build the concept vectors of the model and cache them"
    )
    build.add_argument("--layer", type=int, help="decoder layer (default: the middle one)")
    _add_model_flags(build)

    states = sub.add_parser("states", help="KV states of a running server")
    states.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    states_sub = states.add_subparsers(dest="states_command", required=True)
    states_sub.add_parser("list", help="every state: id, parent, tokens, where its KV is")
    for name, what in [("show", "one state as JSON"), ("delete", "forget a state")]:
        states_sub.add_parser(name, help=what).add_argument("state_id")
    export = states_sub.add_parser("export", help="download a state to a local file")
    export.add_argument("state_id")
    export.add_argument("file", type=Path)
    load = states_sub.add_parser("import", help="upload a local state file as a new state")
    load.add_argument("file", type=Path)

    bench = sub.add_parser("bench", help="measurements on this machine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    kernels = bench_sub.add_parser(
        "kernels",
        help="time every weight format for the model's shapes, check its quality, print the "
        "table and cache the choice 'auto' uses on this CPU",
    )
    kernels.add_argument("--max-num-seqs", type=int, help="the full batch to time")
    _add_model_flags(kernels)

    db = sub.add_parser("db", help="the database's schema (GLASSBOX_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate it to the newest revision")
    db_sub.add_parser("current", help="print its revision")

    keys = sub.add_parser("keys", help="API keys, in the configured database (no server needed)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key and print it (the only time)")
    create.add_argument("--tenant", required=True, help="whose data the key reaches")
    _add_scopes(create, "repeatable (default: user); read: GET and HEAD only")
    create.add_argument("--name", default="", help="a label for lists")
    create.add_argument("--expires-in", type=float, metavar="DAYS", help="default: never")
    create.add_argument(
        "--requests-per-minute",
        type=int,
        metavar="N",
        help="this key's own request limit (0: none; default: the tenant's or the server's)",
    )
    create.add_argument(
        "--tokens-per-minute", type=int, metavar="N", help="this key's own token limit (as above)"
    )
    listing = keys_sub.add_parser("list", help="keys without their secrets")
    listing.add_argument("--tenant", help="only this tenant's")
    update = keys_sub.add_parser(
        "update", help="change a key's name, scopes, expiry or limits (the key itself stays)"
    )
    update.add_argument("key_id")
    update.add_argument("--name", help="a new label")
    _add_scopes(update, "repeatable: the key's scopes from now on")
    expiry = update.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=float, metavar="DAYS", help="from now")
    expiry.add_argument("--never-expires", action="store_true")
    for flag in ("--requests-per-minute", "--tokens-per-minute"):
        update.add_argument(
            flag,
            type=_limit,
            metavar="N|default",
            help="this key's own limit (0: none; default: the tenant's or the server's)",
        )
    keys_sub.add_parser("revoke", help="stop a key from working").add_argument("key_id")

    worker = sub.add_parser(
        "worker",
        help="run the embedding job pipeline's stages, taken from Redis streams (scale-out: "
        "any number of workers on one database and one Redis; the server only queues)",
    )
    worker.add_argument("--database-url", help="the servers' database (SQLAlchemy URL)")
    worker.add_argument("--redis-url", help="the servers' Redis (redis://...)")
    worker.add_argument("--stages", type=_stages, metavar="STAGE[,STAGE]",
                        help="chunking, embedding, storage (default: all three)")  # fmt: skip
    worker.add_argument("--name", help="this consumer's name in the group (default: host-pid)")
    worker.add_argument("--visibility-timeout", type=float, metavar="SECONDS",
                        help="idle time after which another worker takes an entry over "
                        "(default 60; longer than one batch takes)")  # fmt: skip
    worker.add_argument(
        "--max-deliveries",
        type=int,
        help="deliveries of an entry before the dead-letter stream (default 5)",
    )
    worker.add_argument("--log-level")
    return parser


def _stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in ("chunking", "embedding", "storage")]
    if not stages or unknown:
        raise argparse.ArgumentTypeError(
            f"expected stages among chunking, embedding, storage, got {text!r}"
        )
    return stages


def worker_command(args: argparse.Namespace) -> int:
    """Load the embedding model (on a thread of its own: the one thread that runs torch
    here) and consume the stages until SIGTERM or SIGINT."""
    from concurrent.futures import ThreadPoolExecutor

    from glassbox.embeddings.chunks import ChunkStore
    from glassbox.embeddings.jobs_worker import StageWorker, run_until_signalled
    from glassbox.logs import configure_logging
    from glassbox.runtime import build_embeddings
    from glassbox.store import Database
    from glassbox.store.db import default_url

    settings = _settings(args, ["database_url", "redis_url", "log_level"])
    if not settings.redis_url:
        print("error: a worker takes its work from Redis: give --redis-url (or "
              "GLASSBOX_REDIS_URL)", file=sys.stderr)  # fmt: skip
        return 2
    configure_logging(settings.log_level, settings.log_json)
    options: dict[str, Any] = {"consumer": args.name, "stages": args.stages,
                               "visibility_timeout": args.visibility_timeout,
                               "max_deliveries": args.max_deliveries}  # fmt: skip
    db = Database(settings.database_url or default_url(settings.cache_dir))
    torch_thread = ThreadPoolExecutor(1, thread_name_prefix="glassbox-torch")

    def call(fn: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(torch_thread, fn, None)

    embedder = build_embeddings(settings, call)
    worker = StageWorker.create(db, embedder, ChunkStore(db), settings.redis_url,
                                **{k: v for k, v in options.items() if v is not None})  # fmt: skip

    async def run() -> None:
        try:
            await embedder.load()
            await run_until_signalled(worker)
        finally:
            await worker.close()
            await embedder.aclose()

    try:
        asyncio.run(run())
    finally:
        torch_thread.shutdown()
        db.close()
    return 0


def keys_command(args: argparse.Namespace) -> int:
    """On the database directly: whoever can read it may manage every tenant's keys. A key
    revoked here stops working in running servers within GLASSBOX_API_KEYS_CACHE_SECONDS."""
    from datetime import datetime, timedelta

    from glassbox.auth import KeyService, load_secret
    from glassbox.errors import GlassboxError
    from glassbox.principal import KeyLimits
    from glassbox.store import Database
    from glassbox.store.db import default_url

    settings = Settings()
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret else None
    db = Database(settings.database_url or default_url(settings.cache_dir))
    service = KeyService(db, load_secret(secret, settings.cache_dir))

    def day(t: datetime | None) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"

    try:
        if args.keys_command == "create":
            expires = timedelta(days=args.expires_in) if args.expires_in is not None else None
            limits = KeyLimits(args.requests_per_minute, args.tokens_per_minute)
            created = service.create(
                args.tenant, args.scopes or ["user"], args.name, expires, limits
            )
            print(created.key)
            k = created.record
            note = (
                f"{k.id} tenant={k.tenant} scopes={','.join(k.scopes)} expires={day(k.expires_at)}"
            )
            print(f"{note}: the key is shown only this once", file=sys.stderr)
        elif args.keys_command == "list":
            print(f"{'id':28} {'prefix':8} {'tenant':16} {'scopes':16} {'created':16} "
                  f"{'expires':16} {'last used':16} {'status':8} name")  # fmt: skip
            for k in service.list(args.tenant):
                print(f"{k.id:28} {k.prefix:8} {k.tenant:16} {','.join(k.scopes):16} "
                      f"{day(k.created_at):16} {day(k.expires_at):16} {day(k.last_used_at):16} "
                      f"{k.status():8} {k.name}")  # fmt: skip
        elif args.keys_command == "update":
            changes: dict[str, Any] = {}
            if args.expires_in is not None:
                changes["expires_in"] = timedelta(days=args.expires_in)
            elif args.never_expires:
                changes["expires_in"] = None
            for field in ("requests_per_minute", "tokens_per_minute"):
                value = getattr(args, field)
                if value is not None:
                    changes[field] = None if value == "default" else value
            if not changes and args.name is None and args.scopes is None:
                print("error: nothing to change; see glassbox keys update -h", file=sys.stderr)
                return 2
            k = service.update(args.key_id, name=args.name, scopes=args.scopes, **changes)
            print(f"updated {k.id} scopes={','.join(k.scopes)} expires={day(k.expires_at)} "
                  f"requests_per_minute={k.limits.requests} "
                  f"tokens_per_minute={k.limits.tokens} name={k.name}")  # fmt: skip
        else:
            print(f"revoked {service.revoke(args.key_id).id}")
    except GlassboxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


def bench_kernels(args: argparse.Namespace) -> int:
    import torch

    from glassbox.models import kernels
    from glassbox.runtime import resolve

    settings = _settings(args, [*_MODEL_FLAGS, "max_num_seqs"])
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    model = resolve(settings)
    choice = kernels.choose(
        model.directory, model.fingerprint, settings.cache_dir, settings.max_num_seqs,
        measure_again=True,
    )  # fmt: skip
    print(choice.table())
    print(f"cached in {kernels.cache_file(settings.cache_dir, model.fingerprint, choice.batch)}")
    return 0


def states_command(args: argparse.Namespace) -> int:
    from glassbox.client import Client, GlassboxError

    async def run() -> None:
        async with Client(args.url) as c:
            if args.states_command == "list":
                async for s in c.iter_states():
                    print(f"{s['id']}  parent={s['parent_id'] or '-':32}  "
                          f"{s['num_tokens']:6d} tokens  {s['location']}")  # fmt: skip
            elif args.states_command == "show":
                print(json.dumps(await c.get_state(args.state_id), indent=2))
            elif args.states_command == "delete":
                await c.delete_state(args.state_id)
                print(f"deleted {args.state_id}")
            elif args.states_command == "export":
                data = await c.download_state(args.state_id)
                args.file.write_bytes(data)
                print(f"{args.state_id} -> {args.file} ({len(data)} bytes)")
            else:
                state = await c.import_state(data=args.file.read_bytes())
                print(f"{args.file} -> {state['id']} ({state['num_tokens']} tokens)")

    try:
        asyncio.run(run())
    except (GlassboxError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def db_command(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from glassbox.store import Database, migrate
    from glassbox.store.db import default_url

    settings = Settings()
    url = settings.database_url or default_url(settings.cache_dir)
    if args.db_command == "upgrade":
        Database(url).close()  # construction migrates
    revision = migrate.current(url)
    at_head = " (head)" if revision == migrate.head() else ""
    print(f"{revision or 'none'}{at_head}  {make_url(url).render_as_string(hide_password=True)}")
    return 0


def features_build(args: argparse.Namespace) -> int:
    from glassbox.features.concepts import cache_path, concept_dictionary, load_concept_data
    from glassbox.runtime import load_engine

    settings = _settings(args, _MODEL_FLAGS)
    engine, resolved = load_engine(settings)
    dictionary = concept_dictionary(
        engine, settings.cache_dir, resolved.fingerprint, args.layer, rebuild=True
    )
    path = cache_path(
        settings.cache_dir, resolved.fingerprint, dictionary.layer, load_concept_data().digest
    )
    print(f"{len(dictionary)} concept vectors at layer {dictionary.layer} -> {path}")
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_server(server: uvicorn.Server) -> None:
    """Serve until stopped: the one call `serve` blocks in (tests of what it builds stop it
    here)."""
    server.run()


def serve(args: argparse.Namespace) -> None:
    """Run uvicorn until SIGTERM or Ctrl-C. Uvicorn then stops accepting, waits up to
    `shutdown_grace_seconds` for in-flight requests, cancels the rest (their sequences are
    aborted) and runs the app's shutdown (states and jobs flushed). sse-starlette would cut
    every SSE stream at the signal: it is told not to, so streams get the grace too. Uvicorn
    re-raises the signal once done; the handler installed here makes that an exit with 0, so a
    supervisor sees a clean stop."""
    import uvicorn
    from sse_starlette.sse import AppStatus

    from glassbox.api.streaming import FAREWELL_SECONDS
    from glassbox.app import create_app
    from glassbox.logs import configure_logging

    settings = _settings(args, _SERVE_FLAGS)
    configure_logging(settings.log_level, settings.log_json)
    AppStatus.disable_automatic_graceful_drain()
    signal.signal(signal.SIGTERM, _exit_cleanly)
    grace = settings.shutdown_grace_seconds

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            """Streams still running FAREWELL_SECONDS before the grace ends are told to end
            (with an error event, glassbox.api.streaming) before uvicorn cancels them."""
            if not self.should_exit:
                delay = max(grace - FAREWELL_SECONDS, 0.0)
                timer = threading.Timer(delay, setattr, (AppStatus, "should_exit", True))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=grace,
    )
    run_server(Server(config))


def _messages(args: argparse.Namespace) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    return [*messages, {"role": "user", "content": args.question}]


def _chat_remote(args: argparse.Namespace) -> int:
    import httpx

    body: dict[str, Any] = {
        "messages": _messages(args),
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": True,
    }
    if args.model:
        body["model"] = args.model
    if args.seed is not None:
        body["seed"] = args.seed
    url = args.url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        with client.stream("POST", url + "/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                print(f"error {resp.status_code}: {_error_message(resp.text)}", file=sys.stderr)
                return 1
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    print(f"\nerror: {chunk['error'].get('message')}", file=sys.stderr)
                    return 1
                for choice in chunk.get("choices", []):
                    print(choice.get("delta", {}).get("content") or "", end="", flush=True)
    print()
    return 0


def _error_message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text


def _chat_local(args: argparse.Namespace) -> int:
    from glassbox.errors import GlassboxError
    from glassbox.requests.builder import RequestBuilder
    from glassbox.runtime import start_engine

    settings = _settings(args, _MODEL_FLAGS)
    aengine, _ = start_engine(settings)
    build = RequestBuilder.for_engine(aengine)
    try:
        request = build.request(
            build.chat(_messages(args)),
            prompt_param="question",
            max_tokens=args.max_tokens,
            cap=True,
            temperature=args.temperature,
            seed=args.seed,
        )
    except GlassboxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        aengine.shutdown()
        return 1

    async def run() -> None:
        async for out in aengine.submit(request.prompt_ids, request.params):
            print(out.text, end="", flush=True)

    try:
        asyncio.run(run())
    finally:
        aengine.shutdown()
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        serve(args)
        return 0
    if args.command == "features":
        return features_build(args)
    if args.command == "states":
        return states_command(args)
    if args.command == "db":
        return db_command(args)
    if args.command == "bench":
        return bench_kernels(args)
    if args.command == "worker":
        return worker_command(args)
    if args.command == "keys":
        return keys_command(args)
    if args.url:
        return _chat_remote(args)
    return _chat_local(args)


if __name__ == "__main__":
    sys.exit(main())
