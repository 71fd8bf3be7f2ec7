"""The server's engine: `LLMEngine` on its own thread; asyncio code only submits and consumes.

The engine thread also *builds* the engine (loads the model): every OS thread that runs a
torch op gets an OpenMP team of its own, and an idle team spins on the same cores. A model
loaded on one thread and stepped on another decoded at half the speed (50 against 90 tok/s on
the bundled model), so all model work happens on this one thread, and everything else that
needs the model goes through `call`.

`submit(prompt_token_ids, params)` returns an async iterator of `StepOutput`s. Closing the
iterator early (a client that disconnected) aborts the sequence; the engine thread frees its
blocks before its next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from glassbox.engine.block_manager import KVHandle
from glassbox.engine.errors import EngineDeadError
from glassbox.engine.llm_engine import LLMEngine, StepOutput
from glassbox.engine.sequence import SamplingParams
from glassbox.errors import GenerationTimeout, GlassboxError
from glassbox.models.llama import ModelConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    def __init__(self, load: Callable[[], LLMEngine]):
        """Start the engine thread, build the engine there with `load`, and return once it is
        built (an exception from `load` is raised here)."""
        self._engine: LLMEngine  # touched on the engine thread only, but for read-only stats
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[tuple[int, list[int], SamplingParams, KVHandle | None, _Stream]] = []
        self._aborts: set[int] = set()
        self._calls: list[tuple[Callable, asyncio.Future]] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self._stopped = False
        built = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(load, built, failure), name="glassbox-engine", daemon=True
        )
        self._thread.start()
        built.wait()
        if failure:
            raise failure[0]

    @property
    def tokenizer(self):
        return self._engine.tokenizer

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary (may be padded larger than the tokenizer's)."""
        return self._engine.model.config.vocab_size

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @property
    def max_model_len(self) -> int:
        return self._engine.config.max_model_len

    @property
    def block_size(self) -> int:
        return self._engine.config.block_size

    @property
    def model_config(self) -> ModelConfig:
        """The model's shape (layers, heads, sizes): read-only, safe from any thread."""
        return self._engine.model.config

    def finish_counts(self) -> dict[str, int]:
        """How many sequences finished, by finish reason."""
        return dict(self._engine.stats.finished)

    def stats(self) -> dict[str, int]:
        used, total = self._engine.kv_usage()
        scheduler = self._engine.scheduler
        return {
            # those half way through a chunked prefill run too: they hold their blocks
            "running": len(scheduler.running) + len(scheduler.prefilling),
            "waiting": len(scheduler.waiting) + len(self._pending),
            "kv_blocks_used": used,
            "kv_blocks_total": total,
            "prefix_cached_tokens": self._engine.stats.prefix_cached_tokens,
            "prompt_tokens": self._engine.stats.prompt_tokens,
            "generation_tokens": self._engine.stats.generation_tokens,
        }

    async def submit(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        prefix: KVHandle | None = None,
    ) -> AsyncIterator[StepOutput]:
        """Stream a sequence's outputs. `prefix`: see `LLMEngine.add_request` (the sequence
        takes the handle over, whether it runs or not). Past `params.timeout` seconds the
        sequence is aborted and GenerationTimeout raised."""
        if self._stopped:
            raise EngineDeadError("the engine has stopped")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._wake:
            ticket = self._next_id
            self._next_id += 1
            self._pending.append((ticket, list(prompt_token_ids), params, prefix, stream))
            self._wake.notify()
        finished = False
        loop = asyncio.get_running_loop()
        deadline = None if params.timeout is None else loop.time() + params.timeout
        try:
            while True:
                if deadline is None:
                    item = await stream.queue.get()
                else:
                    try:
                        async with asyncio.timeout_at(deadline):
                            item = await stream.queue.get()
                    except TimeoutError:
                        raise GenerationTimeout(
                            f"the generation took longer than the server's limit of "
                            f"{params.timeout:g} s and was stopped; ask for fewer tokens or "
                            "retry when the server is less busy"
                        ) from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                with self._wake:
                    self._aborts.add(ticket)
                    self._wake.notify()

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run `fn(engine)` on the engine thread between two steps (activation capture,
        dictionary builds: anything that touches the model outside `submit`)."""
        if self._stopped:
            raise EngineDeadError("the engine has stopped")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return await future

    def shutdown(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # --- engine thread -----------------------------------------------------------------

    def _run(
        self, load: Callable[[], LLMEngine], built: threading.Event, failure: list[BaseException]
    ) -> None:
        try:
            self._engine = load()
        except BaseException as exc:  # raised again in __init__, on the caller's thread
            failure.append(exc)
            return
        finally:
            built.set()
        self._loop()

    def _loop(self) -> None:
        tickets: dict[int, int] = {}  # ticket -> seq_id
        owners: dict[int, int] = {}  # seq_id -> ticket
        while True:
            with self._wake:
                while not (
                    self._stopped
                    or self._pending
                    or self._aborts
                    or self._calls
                    or self._engine.has_work()
                ):
                    self._wake.wait()
                if self._stopped:
                    break
                calls, self._calls = self._calls, []
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, set()
            for ticket, ids, params, prefix, stream in pending:
                if ticket in aborts:
                    if prefix is not None:
                        self._engine.block_manager.release(prefix)
                    continue
                try:
                    seq = self._engine.add_request(ids, params, prefix)
                except GlassboxError as exc:  # the engine refused it: its caller hears why
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
                    continue
                tickets[ticket] = seq.seq_id
                owners[seq.seq_id] = ticket
                self._streams[seq.seq_id] = stream
            for ticket in aborts:
                seq_id = tickets.pop(ticket, None)
                if seq_id is not None:
                    owners.pop(seq_id, None)
                    self._streams.pop(seq_id, None)
                    self._engine.abort(seq_id)
            for fn, future in calls:
                self._resolve(future, fn)
            if not self._engine.has_work():
                continue
            try:
                outputs = self._engine.step()
            except Exception as exc:  # a failed step fails its requests, not the server
                log.exception("engine step failed")
                self._fail_all(exc)
                tickets.clear()
                owners.clear()
                continue
            self._deliver(outputs, tickets, owners)
        dead = EngineDeadError("the engine has stopped")
        self._fail_all(dead)
        with self._wake:
            calls, self._calls = self._calls, []
        for _, future in calls:
            future.get_loop().call_soon_threadsafe(_settle, future, None, dead)

    def _resolve(self, future: asyncio.Future, fn: Callable) -> None:
        try:
            result, error = fn(self._engine), None
        except Exception as exc:  # delivered to the caller, the engine goes on
            result, error = None, exc
        loop = future.get_loop()
        if error is None:
            loop.call_soon_threadsafe(_settle, future, result, None)
        else:
            loop.call_soon_threadsafe(_settle, future, None, error)

    def _deliver(
        self, outputs: list[StepOutput], tickets: dict[int, int], owners: dict[int, int]
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for out in outputs:
            stream = self._streams.get(out.seq_id)
            if stream is None:
                if out.kv is not None:  # its consumer is gone: nobody will keep this KV
                    self._engine.block_manager.release(out.kv)
                continue
            by_loop.setdefault(stream.loop, []).append((stream.queue, out))
            if out.finish_reason is not None:
                del self._streams[out.seq_id]
                tickets.pop(owners.pop(out.seq_id), None)
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _fail_all(self, exc: BaseException) -> None:
        for seq_id, stream in list(self._streams.items()):
            self._engine.abort(seq_id)
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
        self._streams.clear()


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _put_all(items: list) -> None:
    for queue, out in items:
        queue.put_nowait(out)
