"""The feature dictionaries are built once, by a task of their own: a caller that goes away
(a client that timed out) does not stop the build, and the next caller awaits the same one
instead of starting again from zero."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from glassbox.features.service import FeatureService


class Dictionary(SimpleNamespace):
    def __len__(self) -> int:
        return 0


class Engine:
    """What FeatureService asks of the engine before it builds (sizes, a tokenizer) and an
    engine thread that runs a call at once."""

    tokenizer = None
    vocab_size = 10
    max_model_len = 32

    async def call(self, fn):
        return fn(None)


async def test_a_caller_that_leaves_does_not_stop_the_build(tmp_path: Path, monkeypatch):
    service = FeatureService(Engine(), tmp_path, "fingerprint", base_model="tiny")
    started = []
    concepts = Dictionary(name="concepts")

    async def slow_concepts():
        started.append(1)
        await asyncio.sleep(0.2)
        return concepts, 3

    monkeypatch.setattr(service, "_concepts", slow_concepts)
    monkeypatch.setattr(service, "_load_files", lambda engine: [])

    leaving = asyncio.ensure_future(service.dictionaries())
    await asyncio.sleep(0.05)
    leaving.cancel()
    assert await service.dictionaries() == [concepts]
    assert await service.dictionaries() == [concepts]
    assert started == [1]  # one build, finished though its first caller left


async def test_a_failed_build_is_started_again_by_the_next_caller(tmp_path: Path, monkeypatch):
    service = FeatureService(Engine(), tmp_path, "fingerprint", base_model="tiny")
    outcomes = [RuntimeError("the engine stopped"), (Dictionary(name="concepts"), 0)]

    async def concepts():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(service, "_concepts", concepts)
    monkeypatch.setattr(service, "_load_files", lambda engine: [])
    try:
        await service.dictionaries()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failed build did not raise")
    assert [d.name for d in await service.dictionaries()] == ["concepts"]
