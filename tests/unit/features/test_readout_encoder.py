"""A dictionary's encoder (what the engine's readout runs during generation) computes what
inspection reports: `activations`, for every kind of dictionary."""

from __future__ import annotations

import pytest
import torch

from glassbox.features.concepts import ConceptDictionary
from glassbox.features.dictionary import FeatureDictionary
from glassbox.features.sae import SAEDictionary

HIDDEN, N = 8, 12


def _tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, HIDDEN, generator=g),
        torch.randn(N, HIDDEN, generator=g),
        torch.randn(N, generator=g),
        torch.rand(N, generator=g),
    )


def _dictionaries() -> list[FeatureDictionary]:
    write, read, bias, extra = _tensors()
    labels = [f"f{i}" for i in range(N)]
    return [
        FeatureDictionary("linear", 2, labels, write, read, bias),
        ConceptDictionary("concepts", 2, labels, write, read, bias, noise=extra),
        SAEDictionary("relu", 2, labels, write, read, bias, "standard"),
        SAEDictionary("jump", 2, labels, write, read, bias, "jumprelu", threshold=extra),
        SAEDictionary("topk", 2, labels, write, read, bias, "topk", k=3),
    ]


@pytest.mark.parametrize("d", _dictionaries(), ids=lambda d: d.name)
def test_encoder_computes_the_dictionarys_activations(d: FeatureDictionary) -> None:
    h = torch.randn(6, HIDDEN, generator=torch.Generator().manual_seed(1))
    encoder = d.encoder
    assert encoder.layer == d.layer and len(encoder) == len(d)
    torch.testing.assert_close(encoder(h), d.activations(h), atol=1e-5, rtol=1e-5)
    assert d.encoder is encoder  # built once: rows that share it share one matmul
