"""Backends by name: a plugin-style registry (Elpis's `create_backend` and friends).

A backend registers a factory and an `available()` check (is its optional dependency
installed?). The built-ins are "local" (glassbox's own engine, steering), "llama-cpp"
(llama-cpp-python, the `llamacpp` extra) and "openai-upstream" (any OpenAI-compatible server
over httpx); their modules are imported only when a backend is created.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from glassbox.backends.base import InferenceEngine


class BackendUnavailableError(RuntimeError):
    """The backend is registered but its dependency is not installed."""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., InferenceEngine]
    available: Callable[[], bool]


_REGISTRY: dict[str, _Entry] = {}


def register_backend(
    name: str,
    factory: Callable[..., InferenceEngine],
    available: Callable[[], bool] = lambda: True,
) -> None:
    """Register (or replace) the backend `name`; `factory(**kwargs)` builds one."""
    _REGISTRY[name] = _Entry(factory, available)


def create_backend(name: str, **kwargs) -> InferenceEngine:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(
            f"unknown backend {name!r}; registered backends: {', '.join(sorted(_REGISTRY))}"
        )
    if not entry.available():
        raise BackendUnavailableError(
            f"backend {name!r} is not available: its optional dependency is not installed"
        )
    return entry.factory(**kwargs)


def get_available_backends() -> dict[str, bool]:
    return {name: _is_available(entry) for name, entry in sorted(_REGISTRY.items())}


def is_backend_available(name: str) -> bool:
    entry = _REGISTRY.get(name)
    return entry is not None and _is_available(entry)


def _is_available(entry: _Entry) -> bool:
    try:
        return bool(entry.available())
    except Exception:  # a broken check means the backend cannot be used, not a crash
        return False


def _lazy(module: str, cls: str) -> Callable[..., InferenceEngine]:
    def factory(**kwargs) -> InferenceEngine:
        return getattr(importlib.import_module(module), cls)(**kwargs)

    return factory


def _installed(package: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(package) is not None


register_backend("local", _lazy("glassbox.backends.local", "LocalBackend"))
register_backend(
    "llama-cpp", _lazy("glassbox.backends.llama_cpp", "LlamaCppBackend"), _installed("llama_cpp")
)
register_backend(
    "openai-upstream",
    _lazy("glassbox.backends.openai_upstream", "OpenAIUpstreamBackend"),
    _installed("httpx"),
)
