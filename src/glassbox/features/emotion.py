"""An emotional state on the valence/arousal plane, and the two ways it modulates generation.

`EmotionalState(valence, arousal)` has both axes in [-1, 1]. Backends that can steer
activations blend four quadrant emotion vectors by `get_steering_coefficients()`; backends
that cannot fall back to `get_sampling_params()`, a modulation of temperature and top_p.

Steering coefficients are the bilinear weights of the state's position in the square, with
u = (1 + valence) / 2 and w = (1 + arousal) / 2 (both in [0, 1]):

    excited    (+valence, +arousal) = u * w
    calm       (+valence, -arousal) = u * (1 - w)
    frustrated (-valence, +arousal) = (1 - u) * w
    depleted   (-valence, -arousal) = (1 - u) * (1 - w)

They are non-negative and sum to 1: a corner is all one emotion ((1, 1) -> excited = 1), the
neutral state (0, 0) is 0.25 of each, and they move linearly along each axis.

Sampling modulation (for backends without steering):

    temperature = clip(base_temperature + 0.3 * arousal, 0.1, 1.5)
    top_p       = clip(base_top_p + 0.1 * valence, 0.5, 1.0)

Arousal makes the text livelier (hotter sampling), low arousal steadier; positive valence opens
the nucleus a little, negative valence narrows it. Both are non-decreasing in their axis, and
the neutral state leaves base values inside the bounds unchanged.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

EMOTIONS = ("excited", "calm", "frustrated", "depleted")

TEMPERATURE_PER_AROUSAL = 0.3
TOP_P_PER_VALENCE = 0.1
TEMPERATURE_BOUNDS = (0.1, 1.5)
TOP_P_BOUNDS = (0.5, 1.0)


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


@dataclass(frozen=True)
class EmotionalState:
    valence: float  # -1 (unpleasant) .. 1 (pleasant)
    arousal: float  # -1 (low energy) .. 1 (high energy)

    def __post_init__(self) -> None:
        for name in ("valence", "arousal"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number in [-1, 1], got {value!r}")
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1], got {value}")

    def get_steering_coefficients(self) -> dict[str, float]:
        """Bilinear weights of the four quadrant emotions (see the module docstring)."""
        u = (1.0 + self.valence) / 2.0
        w = (1.0 + self.arousal) / 2.0
        return {
            "excited": u * w,
            "calm": u * (1.0 - w),
            "frustrated": (1.0 - u) * w,
            "depleted": (1.0 - u) * (1.0 - w),
        }

    def get_sampling_params(
        self, base_temperature: float, base_top_p: float
    ) -> tuple[float, float]:
        """(temperature, top_p) for a backend that cannot steer (see the module docstring)."""
        if not math.isfinite(base_temperature) or base_temperature < 0:
            raise ValueError(f"base_temperature must be >= 0, got {base_temperature}")
        if not math.isfinite(base_top_p) or not 0.0 < base_top_p <= 1.0:
            raise ValueError(f"base_top_p must be in (0, 1], got {base_top_p}")
        temperature = base_temperature + TEMPERATURE_PER_AROUSAL * self.arousal
        top_p = base_top_p + TOP_P_PER_VALENCE * self.valence
        return _clip(temperature, TEMPERATURE_BOUNDS), _clip(top_p, TOP_P_BOUNDS)
