"""Named steering vectors at one layer, blended by coefficients into a `SteeringPlan`.

Elpis's SteeringManager keeps one vector per emotion and adds a weighted sum of them with a
forward hook. Here the vectors are features of a `FeatureDictionary` (concept vectors, or a
folder with one vector file per name), and a blend is a plan of nudge edits that rides in the
request's `SamplingParams.steering`: the engine applies it per batch row at the layer hook,
so differently blended requests share a batch and no hook is installed or removed.

Scale: a coefficient of 1.0 adds the feature's write vector once. For concept vectors that is
one steering unit (0.25 x the layer's median residual norm, inside the coherent window); a
vector file is added as it is stored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from glassbox.features.concepts import ConceptData, load_concept_data
from glassbox.features.dictionary import FeatureDictionary
from glassbox.features.vector_files import load_vector_folder
from glassbox.steering.plan import Direction, SteeringPlan


class SteeringVectors:
    """Named directions of one dictionary. Names are matched case-insensitively."""

    def __init__(self, dictionary: FeatureDictionary, names: Mapping[str, int]):
        """`names` maps each name to a feature index of `dictionary`."""
        self.dictionary = dictionary
        self._index: dict[str, int] = {}
        self._names: dict[str, str] = {}  # casefolded -> as given
        for name, index in names.items():
            if not 0 <= index < len(dictionary):
                raise ValueError(
                    f"{name!r}: feature index {index} is out of range [0, {len(dictionary)})"
                )
            key = name.casefold()
            if key in self._index and self._index[key] != index:
                raise ValueError(f"{name!r} names two different features")
            self._index[key] = index
            self._names[key] = name
        self._directions: dict[int, Direction] = {}

    @classmethod
    def from_dictionary(
        cls,
        dictionary: FeatureDictionary,
        names: Iterable[str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> SteeringVectors:
        """Vectors named by the dictionary's labels and by `aliases` (name -> feature label,
        e.g. a concept id -> its label). With `names`, only those, each of which must match
        an alias or a label (case-insensitively); without, every label and alias that matches.
        """
        by_label: dict[str, list[int]] = {}
        for i, label in enumerate(dictionary.labels):
            by_label.setdefault(label.casefold(), []).append(i)
        alias_of = {k.casefold(): v.casefold() for k, v in (aliases or {}).items()}

        def lookup(name: str) -> int | None:
            key = name.casefold()
            hits = by_label.get(alias_of.get(key, key)) or by_label.get(key) or []
            if len(hits) > 1:
                raise ValueError(
                    f"{name!r} matches {len(hits)} features of dictionary "
                    f"{dictionary.name!r} with the same label; name one by an alias"
                )
            return hits[0] if hits else None

        if names is None:
            candidates = [*(aliases or {}), *dictionary.labels]
            found = {n: i for n in candidates if (i := _unique(lookup, n)) is not None}
            return cls(dictionary, found)
        found, missing = {}, []
        for name in names:
            index = lookup(name)
            if index is None:
                missing.append(name)
            else:
                found[name] = index
        if missing:
            raise ValueError(
                f"no feature of dictionary {dictionary.name!r} matches "
                f"{', '.join(map(repr, missing))} (by label or alias)"
            )
        return cls(dictionary, found)

    @classmethod
    def from_concepts(
        cls,
        dictionary: FeatureDictionary,
        names: Iterable[str] | None = None,
        data: ConceptData | None = None,
    ) -> SteeringVectors:
        """Vectors of a concept dictionary, named by concept id (e.g. "excited") or label."""
        data = data or load_concept_data()
        return cls.from_dictionary(dictionary, names, {c.id: c.label for c in data.concepts})

    @classmethod
    def from_folder(
        cls, directory: str | Path, layer: int, hidden_size: int, model_fingerprint: str = ""
    ) -> SteeringVectors:
        """One vector per file in `directory`, named by the file's stem (see vector_files)."""
        dictionary = load_vector_folder(directory, layer, hidden_size, model_fingerprint)
        return cls(dictionary, {label: i for i, label in enumerate(dictionary.labels)})

    @property
    def available(self) -> list[str]:
        return sorted(self._names.values())

    @property
    def layer(self) -> int:
        return self.dictionary.layer

    @property
    def hidden_size(self) -> int:
        return self.dictionary.hidden_size

    def __contains__(self, name: str) -> bool:
        return name.casefold() in self._index

    def direction(self, name: str) -> Direction:
        index = self._resolve(name)
        if index not in self._directions:
            self._directions[index] = self.dictionary.direction(index)
        return self._directions[index]

    def blend(self, coefficients: Mapping[str, float], strength: float = 1.0) -> SteeringPlan:
        """One nudge edit per non-zero coefficient, of value coefficient x strength."""
        checked = self._check(coefficients, strength)
        edits = []
        for name, c in checked.items():
            if c * strength != 0.0:
                edits.extend(self.dictionary.nudge(self._resolve(name), c * strength))
        return SteeringPlan(edits=edits)

    def blended_vector(
        self, coefficients: Mapping[str, float], strength: float = 1.0
    ) -> torch.Tensor:
        """The vector a blend adds to the residual stream: sum of c x strength x write."""
        out = torch.zeros(self.hidden_size)
        for name, c in self._check(coefficients, strength).items():
            out += (c * strength) * self.dictionary.write[self._resolve(name)]
        return out

    def _resolve(self, name: str) -> int:
        index = self._index.get(name.casefold())
        if index is None:
            raise ValueError(
                f"unknown steering vector {name!r}; available: {', '.join(self.available)}"
            )
        return index

    def _check(self, coefficients: Mapping[str, float], strength: float) -> dict[str, float]:
        if not _finite(strength):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        for name, c in coefficients.items():
            self._resolve(name)
            if not _finite(c):
                raise ValueError(f"coefficient of {name!r} must be a finite number, got {c!r}")
        return {name: float(c) for name, c in coefficients.items()}


def _finite(x) -> bool:
    return isinstance(x, numbers.Real) and math.isfinite(x)


def _unique(lookup, name: str) -> int | None:
    """lookup(name), or None where the name is ambiguous (listing all names skips those)."""
    try:
        return lookup(name)
    except ValueError:
        return None
