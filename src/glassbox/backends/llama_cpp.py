"""llama-cpp-python as a backend (the `llamacpp` extra): GGUF models at llama.cpp speed.

llama.cpp's Python API cannot add vectors to the residual stream per request, so emotions
modulate sampling: the coefficients are logged and mapped to a valence/arousal state that
shifts temperature and top_p (`InferenceEngine.sampling`). A `Llama` is not thread-safe: one
generation runs at a time, on a worker thread, so the event loop stays free.

Extra buffer types (llama.cpp's weight repacking, including the AMX matmul kernels) are off
by default: on this project's machines (Firecracker VMs whose CPUs report AMX) the AMX
kernels crash the process with a segfault in the first decode. `extra_buffer_types=True`
turns them back on where they work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from glassbox.backends.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InferenceEngine,
    Message,
    ResponseFormat,
)

_DONE = object()
_PARAMS_LOCK = threading.Lock()


class LlamaCppBackend(InferenceEngine):
    SUPPORTS_STEERING = False
    MODULATION_TYPE = "sampling"

    def __init__(
        self,
        model_path: str | Path,
        n_threads: int | None = None,
        n_ctx: int = 2048,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        extra_buffer_types: bool = False,
        **llama_kwargs: Any,
    ):
        """`llama_kwargs` go to `llama_cpp.Llama` as they are (e.g. `chat_format`, `seed`)."""
        super().__init__(temperature, top_p)
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF model file does not exist")
        llama_kwargs.setdefault("verbose", False)
        self.llm = load_llama(
            extra_buffer_types,
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            **llama_kwargs,
        )
        self._lock = threading.Lock()

    async def chat_completion_stream(
        self,
        messages: list[Message],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        emotion_coefficients: Mapping[str, float] | None = None,
        *,
        response_format: ResponseFormat | None = None,
    ) -> AsyncIterator[str]:
        self.json_format(response_format)  # refused: SUPPORTS_JSON_SCHEMA is false
        temperature, top_p = self.sampling(temperature, top_p, emotion_coefficients)
        kwargs = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stream": True,
        }
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed: nobody is listening any more
                stop.set()

        def generate() -> None:
            try:
                with self._lock:
                    chunks = self.llm.create_chat_completion(**kwargs)
                    try:
                        for chunk in chunks:
                            if stop.is_set():
                                break
                            text = chunk["choices"][0]["delta"].get("content")
                            if text:
                                put(text)
                    finally:
                        getattr(chunks, "close", lambda: None)()
            except Exception as exc:  # delivered to the consumer
                put(exc)
            finally:
                put(_DONE)

        loop.run_in_executor(None, generate)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self.llm.close()

        await asyncio.to_thread(close)


def load_llama(extra_buffer_types: bool, **kwargs: Any):
    """`llama_cpp.Llama(**kwargs)` with the model parameter `use_extra_bufts` set.

    `Llama` has no argument for it and fills its model parameters from
    `llama_model_default_params()` inside `__init__`, so that function is wrapped for the
    duration of the load (under a lock: loads in other threads see the same wrapper)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    with _PARAMS_LOCK:
        defaults = low.llama_model_default_params

        def params():
            p = defaults()
            p.use_extra_bufts = extra_buffer_types
            return p

        low.llama_model_default_params = params
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low.llama_model_default_params = defaults
