"""Inference backends behind one interface (`InferenceEngine`), created by name."""

from glassbox.backends.base import InferenceEngine, modulate_sampling, state_from_coefficients
from glassbox.backends.registry import (
    BackendUnavailableError,
    create_backend,
    get_available_backends,
    is_backend_available,
    register_backend,
)

__all__ = [
    "BackendUnavailableError",
    "InferenceEngine",
    "create_backend",
    "get_available_backends",
    "is_backend_available",
    "modulate_sampling",
    "register_backend",
    "state_from_coefficients",
]
