"""Feature dictionaries: labelled directions in the residual stream at one layer.

Every dictionary, whatever it came from (concept vectors built by DiffMean, an SAE, vector
files), answers the same two questions for steering and inspection:

- read: a feature's activation on a residual vector h, `h @ read[f] + read_bias[f]` (linear:
  the pre-activation for an SAE), in units where 1.0 is the feature's typical strong value;
- write: the residual-stream vector `write[f]` that adds 1.0 of the feature.

So "nudge f by v" is `h += v * write[f]` and "pin f to v" is `h += (v - read_f(h)) * write[f]`.
`activations()` is what inspection reports (an SAE applies its activation function there).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cached_property

import torch

from glassbox.engine.readout import FeatureEncoder
from glassbox.steering.plan import Direction, ResolvedEdit

# Feature ids are UUIDs like Ember's, derived from (model fingerprint, dictionary, index) so
# they stay the same across restarts and machines.
_NAMESPACE = uuid.UUID("6f1d8b7e-2c4a-4f0e-9a51-3d2b7c9e8a10")


@dataclass(frozen=True)
class Feature:
    uuid: str  # 32 hex characters
    label: str
    index: int  # index in its dictionary (Ember's index_in_sae)
    dictionary: str
    layer: int

    def json(self) -> dict:
        """Ember's feature JSON."""
        return {
            "uuid": self.uuid,
            "label": self.label,
            "index_in_sae": self.index,
            "max_activation_strength": 1,
        }


class FeatureDictionary:
    """Labelled directions at one layer; see the module docstring for read/write."""

    def __init__(
        self,
        name: str,
        layer: int,
        labels: list[str],
        write: torch.Tensor,
        read: torch.Tensor,
        read_bias: torch.Tensor | None = None,
        model_fingerprint: str = "",
        descriptions: list[str] | None = None,
        steer_layers: tuple[int, ...] | None = None,
    ):
        n = len(labels)
        if write.ndim != 2 or write.shape[0] != n or read.shape != write.shape:
            raise ValueError(
                f"dictionary {name!r}: {n} labels need write and read matrices of shape "
                f"[{n}, hidden]; got {tuple(write.shape)} and {tuple(read.shape)}"
            )
        self.name = name
        self.layer = layer
        # Where a nudge is written: its value is split evenly over these layers (the same
        # direction at neighbouring layers steers more fluently than all of it at one).
        self.steer_layers = tuple(steer_layers) if steer_layers else (layer,)
        self.labels = list(labels)
        self.descriptions = list(descriptions) if descriptions else list(labels)
        self.write = write.float().contiguous()
        self.read = read.float().contiguous()
        self.read_bias = (
            torch.zeros(n) if read_bias is None else read_bias.float().reshape(n).contiguous()
        )
        self.features = [
            Feature(
                uuid.uuid5(_NAMESPACE, f"{model_fingerprint}/{name}/{i}").hex, label, i, name, layer
            )
            for i, label in enumerate(self.labels)
        ]
        self._by_uuid = {f.uuid: f for f in self.features}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hidden_size(self) -> int:
        return self.write.shape[1]

    def by_uuid(self, feature_uuid: str) -> Feature | None:
        return self._by_uuid.get(feature_uuid.replace("-", "").lower())

    def read_linear(self, h: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """[T, hidden] -> [T, n] (or [T, len(index)]) linear activations."""
        if index is None:
            return h @ self.read.T + self.read_bias
        return h @ self.read[index].T + self.read_bias[index]

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """What inspection reports: [T, hidden] -> [T, n]. Linear dictionaries report the
        projection itself; an SAE overrides this with its activation function."""
        return self.read_linear(h)

    @cached_property
    def encoder(self) -> FeatureEncoder:
        """`activations` as plain tensors, for the engine's readout during generation."""
        return FeatureEncoder(self.name, self.layer, self.read, self.read_bias)

    def direction(self, index: int, layer: int | None = None) -> Direction:
        """Feature `index`'s read/write vectors, applied at `layer` (default: its own)."""
        return Direction(
            self.features[index].uuid,
            self.layer if layer is None else layer,
            self.read[index],
            float(self.read_bias[index]),
            self.write[index],
        )

    def nudge(self, index: int, value: float) -> list[ResolvedEdit]:
        """The edits that add `value` of feature `index`, spread over `steer_layers`."""
        share = value / len(self.steer_layers)
        return [ResolvedEdit(self.direction(index, at), "nudge", share) for at in self.steer_layers]
