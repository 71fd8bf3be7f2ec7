"""AutoSteer picks the features that match a description, strongest for the best match."""

from __future__ import annotations

import torch

from glassbox.features.autosteer import AUTOSTEER_TOTAL, autosteer
from glassbox.features.dictionary import FeatureDictionary
from glassbox.features.search import FeatureIndex


class KeywordEmbedder:
    """Bag-of-words embeddings over a tiny vocabulary: enough to rank features by overlap."""

    VOCAB = ["pirate", "sea", "ship", "anger", "rage", "cooking", "food", "recipe"]

    def embed(self, texts):
        rows = []
        for t in texts:
            words = t.lower().replace(":", " ").split()
            v = torch.tensor([float(sum(w.startswith(k) for w in words)) for k in self.VOCAB])
            rows.append(v / v.norm().clamp(min=1e-8))
        return torch.stack(rows)


def _dictionary():
    labels = ["Pirate speech", "Anger", "Cooking recipes"]
    descriptions = ["pirate sea ship talk", "anger rage", "cooking food recipe"]
    w = torch.eye(3, 8)
    return FeatureDictionary("t", 0, labels, w, w, descriptions=descriptions)


def test_autosteer_nudges_the_best_matching_feature():
    index = FeatureIndex([_dictionary()], KeywordEmbedder())
    edits = autosteer(index, "talk like a pirate on a ship at sea")
    assert edits[0][0].label == "Pirate speech"
    assert edits[0][1] == max(v for _, v in edits)
    assert abs(sum(v for _, v in edits) - AUTOSTEER_TOTAL) < 1e-2  # one shared budget
    assert all(f.label != "Cooking recipes" for f, _ in edits)


def test_autosteer_with_nothing_matching_edits_nothing():
    index = FeatureIndex([_dictionary()], KeywordEmbedder())
    assert autosteer(index, "quantum chromodynamics") == []
