"""What a hung test was waiting for. pytest-timeout fails a test that runs too long with the
stack of every thread, but an asyncio test stuck on an await shows only its event loop
waiting in select; the unfinished tasks' stacks show the await that never returned."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO


def unfinished_tasks() -> list[asyncio.Task]:
    """Every unfinished task of every event loop of the process (read from another thread:
    the registry may change while it is copied, so the copy is tried again)."""
    registry = asyncio.tasks._all_tasks  # Python 3.11: one registry of every loop's tasks
    for _ in range(100):
        try:
            return [t for t in list(registry) if not t.done()]
        except RuntimeError:  # changed size during the copy
            continue
    return []


def await_chain(task: asyncio.Task) -> list[str]:
    """Where the task waits: each coroutine of its await chain, outermost first (a task's
    own stack shows only the outermost)."""
    where = []
    awaited = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            where.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        following = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
        if following is None and awaited is not task.get_coro():
            where.append(f"  awaiting {awaited!r}")
        awaited = following
    return where


def print_unfinished_tasks(out: TextIO | None = None) -> None:
    out = out or sys.__stderr__
    tasks = unfinished_tasks()
    print(f"\n+++ {len(tasks)} unfinished asyncio task(s) +++", file=out)
    for task in tasks:
        print(f"--- {task!r}", file=out)
        print("\n".join(await_chain(task)), file=out)
    out.flush()
