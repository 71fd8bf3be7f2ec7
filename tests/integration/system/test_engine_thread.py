"""The server's engine thread is built, warmed up and stepped on one thread, scheduled
`engine_nice` steps below the HTTP thread (runtime.lower_this_thread says why)."""

from __future__ import annotations

import os
import threading

import pytest
from helpers.server import tiny_settings

from glassbox.engine.sequence import SamplingParams
from glassbox.runtime import start_engine


@pytest.mark.parametrize("steps", [0, 3])
async def test_the_engine_thread_is_scheduled_below_the_http_thread(
    tiny_model_dir, tmp_path, steps
):
    settings = tiny_settings(tiny_model_dir, tmp_path).model_copy(update={"engine_nice": steps})
    before = set(threading.enumerate())
    engine, _ = start_engine(settings)
    try:
        [thread] = [t for t in set(threading.enumerate()) - before if t.name == "glassbox-engine"]
        here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(here + steps, 19)
        params = SamplingParams(max_tokens=3, ignore_eos=True)
        outs = [o async for o in engine.submit([1, 2, 3], params)]
        assert outs[-1].finish_reason == "length"  # it serves as before
    finally:
        engine.shutdown()
