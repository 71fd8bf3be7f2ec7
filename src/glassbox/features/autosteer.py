"""AutoSteer: a description in words -> a set of feature edits.

The description is searched like a query; the features that match it nearly as well as the
best one are nudged, each in proportion to its match, the best by AUTOSTEER_VALUE (value 1.0
is one steering unit: see features/concepts.py).
"""

from __future__ import annotations

from glassbox.features.dictionary import Feature
from glassbox.features.search import FeatureIndex

AUTOSTEER_VALUE = 0.8
# Features scoring below this fraction of the best match are left out.
RELATIVE_CUTOFF = 0.8


def autosteer(index: FeatureIndex, description: str, top_k: int = 3) -> list[tuple[Feature, float]]:
    hits = index.search(description, top_k)
    if not hits:
        return []
    best = hits[0][1]
    if best <= 0:
        return []
    return [
        (feature, round(AUTOSTEER_VALUE * score / best, 3))
        for feature, score in hits
        if score >= best * RELATIVE_CUTOFF
    ]
