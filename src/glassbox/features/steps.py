"""Builds that run in steps: a generator that yields between steps and returns its result.

Long tensor work (the concept vectors' forward passes, the search index's label embeddings)
is written this way so that the server can run it one step per engine call
(`FeatureService`), with running generations stepped in between, while a script or a test
runs it to its end in one go (`run_steps`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]


def run_steps(steps: Steps[T]) -> T:
    """Run a stepped build to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def step(steps: Steps[T]) -> tuple[bool, T | None]:
    """Run one step: (True, the result) once the build has ended, else (False, None)."""
    try:
        next(steps)
    except StopIteration as done:
        return True, done.value
    return False, None
