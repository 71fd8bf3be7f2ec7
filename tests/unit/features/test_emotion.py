"""EmotionalState: quadrant steering coefficients and the sampling-modulation fallback."""

from __future__ import annotations

import itertools
import math

import pytest

from glassbox.backends.base import state_from_coefficients
from glassbox.features.emotion import (
    EMOTIONS,
    TEMPERATURE_BOUNDS,
    TOP_P_BOUNDS,
    EmotionalState,
)

GRID = [-1.0, -0.6, -0.25, 0.0, 0.3, 0.75, 1.0]


@pytest.mark.parametrize(
    ("valence", "arousal", "emotion"),
    [(1, 1, "excited"), (1, -1, "calm"), (-1, 1, "frustrated"), (-1, -1, "depleted")],
)
def test_corners_are_one_emotion(valence, arousal, emotion):
    coefficients = EmotionalState(valence, arousal).get_steering_coefficients()
    assert coefficients[emotion] == 1.0
    assert all(c == 0.0 for name, c in coefficients.items() if name != emotion)


def test_neutral_is_a_quarter_of_each():
    assert EmotionalState(0.0, 0.0).get_steering_coefficients() == dict.fromkeys(EMOTIONS, 0.25)


@pytest.mark.parametrize(("valence", "arousal"), list(itertools.product(GRID, GRID)))
def test_weights_are_non_negative_sum_to_one_and_invert(valence, arousal):
    coefficients = EmotionalState(valence, arousal).get_steering_coefficients()
    assert set(coefficients) == set(EMOTIONS)
    assert all(c >= 0.0 for c in coefficients.values())
    assert math.isclose(sum(coefficients.values()), 1.0)
    back = state_from_coefficients(coefficients)
    assert back.valence == pytest.approx(valence) and back.arousal == pytest.approx(arousal)


def test_bilinear_along_an_axis():
    c = EmotionalState(0.5, 0.0).get_steering_coefficients()
    # u = 0.75, w = 0.5
    assert c == pytest.approx(
        {"excited": 0.375, "calm": 0.375, "frustrated": 0.125, "depleted": 0.125}
    )


@pytest.mark.parametrize(
    ("valence", "arousal"), [(1.01, 0), (0, -1.5), (math.nan, 0), (0, math.inf), ("0.5", 0)]
)
def test_out_of_range_raises(valence, arousal):
    with pytest.raises(ValueError, match="valence|arousal"):
        EmotionalState(valence, arousal)


def test_sampling_is_monotonic_in_arousal_and_valence():
    temps = [EmotionalState(0.0, a).get_sampling_params(0.7, 0.9)[0] for a in GRID]
    top_ps = [EmotionalState(v, 0.0).get_sampling_params(0.7, 0.9)[1] for v in GRID]
    assert temps == sorted(temps) and temps[0] < temps[-1]
    assert top_ps == sorted(top_ps) and top_ps[0] < top_ps[-1]
    # each axis moves only its own parameter
    assert len({EmotionalState(v, 0.3).get_sampling_params(0.7, 0.9)[0] for v in GRID}) == 1
    assert len({EmotionalState(0.3, a).get_sampling_params(0.7, 0.9)[1] for a in GRID}) == 1


def test_neutral_leaves_sampling_unchanged():
    assert EmotionalState(0.0, 0.0).get_sampling_params(0.7, 0.9) == (0.7, 0.9)


@pytest.mark.parametrize("base", [(0.0, 0.05), (0.05, 1.0), (1.4, 0.5), (2.0, 0.99), (1.0, 1.0)])
def test_sampling_stays_within_bounds(base):
    for valence, arousal in itertools.product(GRID, GRID):
        t, p = EmotionalState(valence, arousal).get_sampling_params(*base)
        assert TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
        assert TOP_P_BOUNDS[0] <= p <= TOP_P_BOUNDS[1]


@pytest.mark.parametrize(("t", "p"), [(-0.1, 0.9), (0.7, 0.0), (0.7, 1.2), (math.nan, 0.9)])
def test_sampling_rejects_bad_bases(t, p):
    with pytest.raises(ValueError, match="base_"):
        EmotionalState(0.0, 0.0).get_sampling_params(t, p)


def test_coefficients_outside_the_simplex_are_clipped_to_the_square():
    state = state_from_coefficients({"excited": 3.0, "unknown": 9.0})
    assert (state.valence, state.arousal) == (1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        state_from_coefficients({"calm": math.nan})
