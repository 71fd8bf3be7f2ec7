"""Fixtures of the features tests."""

from __future__ import annotations

import pytest

from glassbox.features.label_encoder import LabelEncoder


@pytest.fixture(scope="session")
def embedder() -> LabelEncoder:
    """The bundled all-MiniLM-L6-v2, loaded once for the session."""
    return LabelEncoder.default()
