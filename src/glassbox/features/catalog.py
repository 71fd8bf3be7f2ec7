"""Model-wide feature indices: every dictionary of the model gets an offset (the sizes of the
dictionaries before it), so a feature's `index_in_sae` names it uniquely across all of them,
on every surface (glassbox's /features routes, stored variants and Ember's)."""

from __future__ import annotations

from dataclasses import dataclass

from glassbox.features.dictionary import Feature, FeatureDictionary


@dataclass(frozen=True)
class FeatureCatalog:
    dictionaries: list[FeatureDictionary]
    offsets: dict[str, int]  # dictionary name -> index of its first feature

    @classmethod
    def of(cls, dictionaries: list[FeatureDictionary]) -> FeatureCatalog:
        offsets, total = {}, 0
        for d in dictionaries:
            offsets[d.name] = total
            total += len(d)
        return cls(dictionaries, offsets)

    @property
    def total(self) -> int:
        return sum(len(d) for d in self.dictionaries)

    def index(self, f: Feature) -> int:
        """The feature's model-wide index."""
        return self.offsets[f.dictionary] + f.index

    def by_index(self, index: int) -> Feature | None:
        for d in self.dictionaries:
            local = index - self.offsets[d.name]
            if 0 <= local < len(d):
                return d.features[local]
        return None
