"""What the strict JSON check refuses in a request body, and what it lets through."""

from __future__ import annotations

import json

import pytest

from glassbox.api.middleware import MAX_JSON_DEPTH, json_problem


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"temperature": NaN}', "NaN and Infinity are not JSON numbers"),
        (b'{"temperature": Infinity}', "NaN and Infinity are not JSON numbers"),
        (b'{"seed": 1e400}', "beyond the range of a double"),
        (b'{"messages": [[1e400]]}', "beyond the range of a double"),
        (b'{"model": "a\\ud800b"}', "surrogate"),
        (b'{"model": "a\\u0000b"}', "NUL"),
        (b'{"a\\u0000": 1}', "NUL"),
        (b'{"x": [{"y": "\\u0000"}]}', "NUL"),
        (b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5), "nests deeper"),
        (b'{"model": ', "not valid JSON"),
    ],
)
def test_refused_bodies_say_what_to_fix(body: bytes, says: str):
    problem = json_problem(body)
    assert problem is not None and says in problem, problem


@pytest.mark.parametrize(
    "value",
    [
        {"model": "x", "temperature": 0.5, "seed": 2**62},
        {"text": "a backslash then u0000: \\u0000, rtl \u202e, zero width \u200b, e\u0301"},
        {"nested": [[[[{"deep": [1, 2.5, -3e300]}]]]]},
        [],
    ],
)
def test_valid_json_passes(value):
    assert json_problem(json.dumps(value).encode()) is None
