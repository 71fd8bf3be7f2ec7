"""AsyncLLMEngine: streaming from the engine thread, cancellation frees the sequence."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers.waiting import async_wait_until

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.engine.errors import RequestRejected
from glassbox.engine.sequence import SamplingParams


@pytest.fixture
def async_engine(make_engine):
    eng = AsyncLLMEngine(lambda: make_engine(num_blocks=1024, max_model_len=4096))
    yield eng
    eng.shutdown()


async def test_stream_completes_and_frees_blocks(async_engine):
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    outs = [o async for o in async_engine.submit([1, 2, 3, 4, 5], params)]
    assert sum(len(o.token_ids) for o in outs) == 10
    assert outs[-1].finish_reason == "length"
    assert all(o.finish_reason is None for o in outs[:-1])
    assert await async_wait_until(lambda: async_engine.stats()["kv_blocks_used"] == 0)


async def test_closing_the_iterator_aborts_and_frees_within_a_step(async_engine):
    baseline = async_engine.stats()
    assert baseline["running"] == 0
    params = SamplingParams(max_tokens=4000, temperature=0.0, ignore_eos=True)
    stream = async_engine.submit(list(range(1, 30)), params)
    events = [await anext(stream), await anext(stream)]
    assert all(e.finish_reason is None for e in events)
    assert async_engine.stats()["kv_blocks_used"] > baseline["kv_blocks_used"]
    await stream.aclose()
    # A tiny-model step takes milliseconds: the abort lands within one step.
    freed = await async_wait_until(
        lambda: (
            async_engine.stats()["running"] == 0
            and async_engine.stats()["kv_blocks_used"] == baseline["kv_blocks_used"]
        ),
        timeout=1.0,
    )
    assert freed, async_engine.stats()
    assert async_engine.finish_counts().get("abort") == 1
    # The engine goes on serving.
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    outs = [o async for o in async_engine.submit([7, 8, 9], short)]
    assert outs[-1].finish_reason == "length"


async def test_concurrent_streams_interleave(async_engine):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    async def run(prompt):
        return [
            t for o in [o async for o in async_engine.submit(prompt, params)] for t in o.token_ids
        ]

    together = await asyncio.gather(*(run([i, i + 1, i + 2]) for i in range(1, 5)))
    alone = [await run([i, i + 1, i + 2]) for i in range(1, 5)]
    assert together == alone
    assert all(len(t) == 12 for t in together)


async def test_bad_request_raises_in_the_stream(async_engine):
    with pytest.raises(RequestRejected, match="empty") as info:
        async for _ in async_engine.submit([], SamplingParams()):
            pass
    assert info.value.param == "prompt"


async def test_a_bad_request_does_not_fail_the_others(async_engine):
    good = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    bad = SamplingParams(max_tokens=20, logit_bias={10**6: 1.0})

    async def run(params):
        try:
            return [o async for o in async_engine.submit([1, 2, 3], params)][-1].finish_reason
        except Exception as exc:
            return type(exc).__name__

    good_result, bad_result = await asyncio.gather(run(good), run(bad))
    assert bad_result == "RequestRejected"
    assert good_result == "length"


async def test_call_runs_on_the_engine_thread_between_steps(async_engine):
    import threading

    name = await async_engine.call(lambda engine: threading.current_thread().name)
    assert name == "glassbox-engine"

    def boom(engine):
        raise ValueError("bad capture")

    with pytest.raises(ValueError, match="bad capture"):
        await async_engine.call(boom)
    # the engine still serves after a failed call
    outs = [o async for o in async_engine.submit([1, 2, 3], SamplingParams(max_tokens=3))]
    assert outs[-1].finish_reason is not None


def test_the_engine_is_built_on_the_engine_thread(make_engine):
    """Loading on the thread that steps keeps torch on one OpenMP team (async_engine.py)."""
    built_on: list[str] = []

    def load():
        built_on.append(threading.current_thread().name)
        return make_engine()

    eng = AsyncLLMEngine(load)
    eng.shutdown()
    assert built_on == ["glassbox-engine"]


def test_a_load_error_reaches_the_caller(make_engine):
    def load():
        raise FileNotFoundError("no weights here")

    with pytest.raises(FileNotFoundError, match="no weights here"):
        AsyncLLMEngine(load)
