"""Ember JSON <-> VariantSpec, checked against the real `goodfire` 0.3.5 classes."""

from __future__ import annotations

import copy
import json
from uuid import UUID

import pytest
from goodfire import Feature, Variant
from goodfire.api.features.interfaces import SearchFeatureResponse
from goodfire.controller.controller import Controller

from glassbox.features.ember_json import (
    EmberJSONError,
    condition_from_ember,
    controller_event_names,
    controller_to_spec,
    feature_from_ember,
    feature_response,
    variant_from_ember,
    variant_to_ember,
)
from glassbox.features.variant import (
    Condition,
    ConditionGroup,
    Edit,
    FeatureRef,
    Scope,
    VariantSpec,
)

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
ID1 = "12345678-1234-5678-1234-567812345678"
ID2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ID3 = "0f0e0d0c-0b0a-4908-8706-050403020100"


@pytest.fixture
def f1() -> Feature:
    return Feature(uuid=UUID(ID1), label="pirate speech", index_in_sae=3)


@pytest.fixture
def f2() -> Feature:
    return Feature(uuid=UUID(ID2), label="formal register", index_in_sae=7)


@pytest.fixture
def f3() -> Feature:
    return Feature(uuid=UUID(ID3), label="talk about the sea", index_in_sae=65535)


def _canonical(variant_json: dict) -> dict:
    """Variant.json() as plain JSON: it leaves scope conditions as SDK objects, and a bare
    Conditional is the one-item AND group that Controller.when (and from_json) makes of it."""

    def condition(c):
        c = c.json()
        return c if "conditionals" in c else {"conditionals": [c], "operator": "AND"}

    out = copy.deepcopy({k: v for k, v in variant_json.items() if k != "scopes"})
    out["scopes"] = [
        {"condition": condition(s["condition"]), "nested_variant": s["nested_variant"]}
        for s in variant_json["scopes"]
    ]
    return json.loads(json.dumps(out))


def _round_trip(variant: Variant) -> Variant:
    spec = variant_from_ember(variant.json())
    data = variant_to_ember(spec)
    json.dumps(data)  # plain JSON, unlike Variant.json() with scopes
    return Variant.from_json(data)


def _controller_comparable(controller: Controller) -> dict:
    """Controller JSON without its random name and event names, ids as hex: a variant from
    Variant.from_json keeps edit ids as the dashed strings it read, where Feature.json()
    of a UUID gives hex, so the SDK itself sends either form."""

    def walk(node):
        if isinstance(node, dict):
            return {
                k: UUID(v).hex if k == "uuid" else None if k == "event_name" else walk(v)
                for k, v in node.items()
                if k != "name"
            }
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(controller.json())


# -- Variant.json() round trips ------------------------------------------------------------


def test_single_nudge_round_trips(f1):
    variant = Variant(MODEL)
    variant.set(f1, 0.5)
    spec = variant_from_ember(variant.json())
    assert spec == VariantSpec(
        base_model=MODEL,
        edits=[
            Edit(
                feature=FeatureRef(uuid=UUID(ID1).hex, label="pirate speech", index_in_sae=3),
                mode="nudge",
                value=0.5,
            )
        ],
    )
    assert _round_trip(variant).json() == variant.json()


def test_batch_set_round_trips_in_order(f1, f2, f3):
    variant = Variant(MODEL)
    variant.set({f1: 0.5, f2: -0.3})
    variant.set(f3, 1)  # an int stays equal after the float round trip
    spec = variant_from_ember(variant.json())
    assert [(e.feature.index_in_sae, e.value) for e in spec.edits] == [
        (3, 0.5),
        (7, -0.3),
        (65535, 1.0),
    ]
    assert _round_trip(variant).json() == variant.json()


def test_set_when_and_abort_when_round_trip(f1, f2, f3):
    variant = Variant(MODEL)
    variant.set({f1: 0.5, f2: -0.3})
    variant.set_when(f1 > 0.5, {f2: 0.2})
    variant.set_when((f1 > 0.5) & (f2 < 0.2), {f1: -0.1, f3: 0.25})
    variant.set_when((f1 >= 0.1) | (f3 != 0), {f3: -0.4})
    variant.abort_when(f2 >= 0.9)

    spec = variant_from_ember(variant.json())
    assert [s.abort for s in spec.scopes] == [False, False, False, True]
    second = spec.scopes[1]
    assert second.when.join == "&"
    assert [(c.feature.index_in_sae, c.operator, c.value) for c in second.when.items] == [
        (3, ">", 0.5),
        (7, "<", 0.2),
    ]
    assert [(e.feature.label, e.value) for e in second.edits] == [
        ("pirate speech", -0.1),
        ("talk about the sea", 0.25),
    ]
    assert spec.scopes[2].when.join == "|"

    back = _round_trip(variant)
    assert _canonical(back.json()) == _canonical(variant.json())
    # The steering the SDK would send is the same too (abort_when's handler and event name
    # live only in the original object: the SDK's JSON never carries them).
    assert _controller_comparable(back.controller) == _controller_comparable(variant.controller)


def test_spec_round_trips_through_the_sdk():
    ref1 = FeatureRef(uuid=UUID(ID1).hex, label="pirate speech", index_in_sae=3)
    ref2 = FeatureRef(uuid=UUID(ID2).hex, label="formal register", index_in_sae=7)
    spec = VariantSpec(
        base_model=MODEL,
        edits=[Edit(feature=ref1, value=0.4), Edit(feature=ref2, value=-0.2)],
        scopes=[
            Scope(
                when=ConditionGroup(
                    join="|",
                    items=[
                        Condition(feature=ref1, operator=">", value=0.5),
                        Condition(feature=ref2, operator="<=", value=-1.0),
                    ],
                ),
                edits=[Edit(feature=ref2, value=0.3)],
            ),
            Scope(
                when=ConditionGroup(items=[Condition(feature=ref2, operator=">", value=0.8)]),
                abort=True,
            ),
        ],
    )
    variant = Variant.from_json(json.dumps(variant_to_ember(spec)))
    assert variant_from_ember(variant.json()) == spec


def test_non_nudge_modes_survive_glassbox_round_trip():
    ref = FeatureRef(uuid=UUID(ID1).hex, label="x", index_in_sae=1)
    spec = VariantSpec(
        base_model=MODEL,
        edits=[Edit(feature=ref, mode="pin", value=0.7), Edit(feature=ref, mode="ablate")],
    )
    data = variant_to_ember(spec)
    assert [e.get("mode") for e in data["edits"]] == ["pin", "ablate"]
    assert variant_from_ember(data) == spec


def test_variant_json_string_and_hex_ids_are_accepted(f1):
    variant = Variant(MODEL)
    variant.set(f1, 0.5)
    data = variant.json()
    data["edits"][0]["feature_id"] = UUID(ID1).hex
    assert variant_from_ember(json.dumps(data)) == variant_from_ember(variant.json())


# -- controller JSON -----------------------------------------------------------------------


def test_controller_of_a_variant(f1, f2, f3):
    variant = Variant(MODEL)
    variant.set({f1: 0.5, f2: -0.3})
    variant.set_when((f1 > 0.5) & (f2 < 0.2), {f3: 0.25})
    variant.abort_when(f2 >= 0.9)
    controller = json.loads(json.dumps(variant.controller.json()))  # as it goes on the wire

    spec = controller_to_spec(controller, MODEL)
    assert spec.base_model == MODEL
    assert [(e.feature.uuid, e.mode, e.value) for e in spec.edits] == [
        (UUID(ID1).hex, "nudge", 0.5),
        (UUID(ID2).hex, "nudge", -0.3),
    ]
    steer, abort = spec.scopes
    assert not steer.abort and abort.abort and abort.edits == []
    assert [(e.feature.index_in_sae, e.mode, e.value) for e in steer.edits] == [
        (65535, "nudge", 0.25)
    ]
    assert [(c.feature.label, c.operator, c.value) for c in steer.when.items] == [
        ("pirate speech", ">", 0.5),
        ("formal register", "<", 0.2),
    ]
    assert abort.when.items == [
        Condition(
            feature=FeatureRef(uuid=UUID(ID2).hex, label="formal register", index_in_sae=7),
            operator=">=",
            value=0.9,
        )
    ]
    names = controller_event_names(controller)
    assert names[0] is None and names[1] in variant._handlers
    # A controller that steers like the variant's converts like the variant's JSON.
    assert spec.edits == variant_from_ember(variant.json()).edits


def test_controller_modes_values_and_nested_scopes(f1, f2, f3):
    controller = Controller()
    controller[f1] += 0.5  # nudge
    controller[f2] -= 0.25  # nudge by -0.25
    controller[f3] = 0.75  # pin
    controller[f1] = True  # a bool pins to 0.5
    controller[f2] *= 2  # mul, int becomes float
    with controller.when(f1 > 0.3):
        controller[f2] += 0.1
        with controller.when((f2 < 0.2) | (f3 > 0.4)):
            controller[f3] = -0.5
    spec = controller_to_spec(json.loads(json.dumps(controller.json())), "glassbox-default")

    assert [(e.feature.index_in_sae, e.mode, e.value) for e in spec.edits] == [
        (3, "nudge", 0.5),
        (7, "nudge", -0.25),
        (65535, "pin", 0.75),
        (3, "pin", 0.5),
        (7, "mul", 2.0),
    ]
    outer, inner = spec.scopes
    assert [(e.mode, e.value) for e in outer.edits] == [("nudge", 0.1)]
    assert [(e.mode, e.value) for e in inner.edits] == [("pin", -0.5)]
    # The inner scope holds only while the outer one does.
    assert inner.when.join == "&" and inner.when.items[0] == outer.when
    assert inner.when.items[1].join == "|" and len(inner.when.items[1].items) == 2
    assert not outer.abort and not inner.abort


def test_nested_conditional_groups_are_kept(f1, f2, f3):
    cond = (f1 > 0.5) & ((f2 < 0.2) | (f3 > 1))
    group = condition_from_ember(cond)  # an SDK object is read through its .json()
    assert group.join == "&"
    assert isinstance(group.items[0], Condition)
    assert group.items[1].join == "|" and group.items[1].items[1].value == 1.0


def test_empty_controller():
    assert controller_to_spec(None, MODEL).is_empty
    assert controller_to_spec({"interventions": [], "scopes": []}, MODEL).is_empty


# -- features and errors -------------------------------------------------------------------


def test_feature_json_forms(f1):
    ref = FeatureRef(uuid=UUID(ID1).hex, label="pirate speech", index_in_sae=3)
    assert feature_from_ember(f1.json()) == ref  # uuid as 32 hex
    assert feature_from_ember({"id": ID1, "label": "pirate speech", "index_in_sae": 3}) == ref
    item = feature_response(ref, relevance=0.8)
    # The SDK's pydantic models and dict reads both accept it, and ids compare as str(UUID).
    parsed = SearchFeatureResponse.model_validate({"features": [item]}).features[0]
    assert str(parsed.id) == item["id"] == item["uuid"] == ID1 and parsed.relevance == 0.8


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"edits": [{"feature_id": "not-a-uuid", "value": 1}]}, "variant.edits[0].uuid"),
        (
            {"edits": [{"feature_id": ID1, "value": "high"}]},
            "variant.edits[0].value",
        ),
        ({"edits": [{"feature_id": ID1, "value": float("nan")}]}, "finite"),
        ({"base_model": ""}, "variant.base_model"),
    ],
)
def test_bad_variant_json_names_the_field(bad, where):
    data = {"base_model": MODEL, "edits": [], "scopes": []} | bad
    with pytest.raises(EmberJSONError, match=where.replace("[", r"\[").replace("]", r"\]")):
        variant_from_ember(data)


def test_unsupported_conditions_say_what_to_do(f1, f2):
    with pytest.raises(EmberJSONError, match="another feature"):
        condition_from_ember(f1 > f2)
    with pytest.raises(EmberJSONError, match="exactly one feature"):
        condition_from_ember((f1 | f2) > 0.5)
    with pytest.raises(EmberJSONError, match="operator"):
        condition_from_ember(
            {"left_hand": f1.json(), "right_hand": 1, "operator": "=>"},
        )
