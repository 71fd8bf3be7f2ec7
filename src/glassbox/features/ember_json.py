"""Goodfire Ember's JSON (as the `goodfire` 0.3.5 SDK writes and reads it) <-> VariantSpec.

Three shapes come from the SDK (docs/ember_api.md has the field-by-field spec):

- `Variant.json()`: edits as `{feature_id, feature_label, index_in_sae, value}` (always
  nudges) and scopes as `{condition, nested_variant}`. The SDK leaves `condition` as a live
  `Conditional`/`ConditionalGroup` object there and drops the abort event name, so its own
  `Variant.from_json(Variant.json())` fails on any scope; `variant_to_ember` writes the
  plain-JSON form (`condition` as a group dict, `base_model` in each scope) that
  `Variant.from_json` does load.
- the controller (`Variant.controller.json()`), sent with chat completions, logits and
  inspect: interventions `{mode, features, value}` and scopes `{conditionals, controller,
  is_active, event_name}`; a scope with an event name is an abort_when (or handle_when).
- feature JSON: `{uuid, label, index_in_sae, max_activation_strength}` with the uuid as 32
  hex characters (a `UUID` object) or as whatever string the Feature was built with.

Feature ids are held as 32 lowercase hex characters (FeatureRef.uuid) and written back in
the canonical dashed form, which is what `str(UUID)` gives on the SDK side. Anything that
does not fit glassbox's schema raises EmberJSONError (a ValueError) naming the field.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from glassbox.features.variant import (
    Condition,
    ConditionGroup,
    Edit,
    FeatureRef,
    Scope,
    VariantSpec,
)

_JOIN_FROM_EMBER = {"AND": "&", "OR": "|", "&": "&", "|": "|"}
_JOIN_TO_EMBER = {"&": "AND", "|": "OR"}
_OPERATORS = {"==", "!=", ">", "<", ">=", "<="}
_MODES = {"nudge", "pin", "mul", "ablate"}


class EmberJSONError(ValueError):
    """Ember JSON that glassbox cannot read; the message names the field."""


# -- features ------------------------------------------------------------------------------


def feature_hex(value: Any, where: str = "feature id") -> str:
    """A feature id (UUID object, dashed or 32-hex string) as 32 lowercase hex characters."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, str):
        try:
            return uuid.UUID(value).hex
        except ValueError:
            pass
    raise EmberJSONError(f"{where}: {value!r} is not a UUID")


def feature_id(uuid_hex: str) -> str:
    """The dashed form the SDK compares ids in (`str(UUID)`): use it in every response."""
    return str(uuid.UUID(uuid_hex))


def feature_from_ember(data: Any, where: str = "feature") -> FeatureRef:
    """FeatureRef from an SDK feature dict: `Feature.json()` (`uuid`), a response item
    (`id`) or a Variant edit (`feature_id`, `feature_label`)."""
    if not isinstance(data, Mapping):
        raise EmberJSONError(f"{where}: expected a feature object, got {data!r}")
    for key in ("uuid", "id", "feature_id"):
        if key in data:
            raw_id = data[key]
            break
    else:
        raise EmberJSONError(f"{where}: a feature needs 'uuid' (or 'id', 'feature_id')")
    label = data.get("label", data.get("feature_label", ""))
    index = data.get("index_in_sae", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise EmberJSONError(f"{where}.index_in_sae: expected an integer, got {index!r}")
    return FeatureRef(
        uuid=feature_hex(raw_id, f"{where}.uuid"), label=str(label or ""), index_in_sae=index
    )


def feature_to_ember(ref: FeatureRef) -> dict:
    """The SDK's `Feature.json()` shape (what it sends inside controllers)."""
    return {
        "uuid": ref.uuid,
        "label": ref.label,
        "index_in_sae": ref.index_in_sae,
        "max_activation_strength": 1,
    }


def feature_response(ref: FeatureRef, relevance: float | None = None) -> dict:
    """A feature as the SDK reads it from responses. Carries both `id` (search, rerank,
    neighbors, contrast, auto-edits, the features list) and `uuid` (lookup), dashed."""
    item = {
        "id": feature_id(ref.uuid),
        "uuid": feature_id(ref.uuid),
        "label": ref.label,
        "index_in_sae": ref.index_in_sae,
    }
    if relevance is not None:
        item["relevance"] = relevance
    return item


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EmberJSONError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise EmberJSONError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


# -- conditions ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """`Variant.json()` leaves scope conditions as SDK objects: take their JSON."""
    to_json = getattr(value, "json", None)
    if callable(to_json) and not isinstance(value, Mapping):
        return to_json()
    return value


def _single_feature(left: Any, where: str) -> FeatureRef:
    if isinstance(left, Mapping) and "features" in left:
        features = left["features"]
        if not isinstance(features, list) or len(features) != 1:
            count = len(features) if isinstance(features, list) else features
            raise EmberJSONError(
                f"{where}: a condition compares exactly one feature; got {count} "
                "(write one condition per feature and join them with & or |)"
            )
        return feature_from_ember(features[0], f"{where}.features[0]")
    return feature_from_ember(left, where)


def _condition_item(data: Any, where: str) -> Condition | ConditionGroup:
    data = _plain(data)
    if isinstance(data, Mapping) and "conditionals" in data:
        return _group_from_ember(data, where)
    if not isinstance(data, Mapping) or "left_hand" not in data:
        raise EmberJSONError(f"{where}: expected a conditional or a conditional group")
    operator = data.get("operator")
    if operator not in _OPERATORS:
        raise EmberJSONError(
            f"{where}.operator: {operator!r} is not one of {', '.join(sorted(_OPERATORS))}"
        )
    right = data.get("right_hand")
    if isinstance(right, Mapping):
        raise EmberJSONError(
            f"{where}.right_hand: comparing a feature with another feature is not supported; "
            "compare it with a number"
        )
    return Condition(
        feature=_single_feature(data["left_hand"], f"{where}.left_hand"),
        operator=operator,
        value=_number(right, f"{where}.right_hand"),
    )


def _group_from_ember(data: Mapping, where: str) -> ConditionGroup:
    join = _JOIN_FROM_EMBER.get(str(data.get("operator", "AND")).upper())
    if join is None:
        raise EmberJSONError(f"{where}.operator: {data.get('operator')!r} is not AND or OR")
    items = data["conditionals"]
    if not isinstance(items, list) or not items:
        raise EmberJSONError(f"{where}.conditionals: expected a non-empty list")
    return ConditionGroup(
        join=join,
        items=[_condition_item(c, f"{where}.conditionals[{i}]") for i, c in enumerate(items)],
    )


def condition_from_ember(data: Any, where: str = "condition") -> ConditionGroup:
    """A ConditionalGroup (dict or SDK object), or a bare Conditional (wrapped in an AND
    group, as `Controller.when` does). Nested groups are kept."""
    item = _condition_item(data, where)
    return item if isinstance(item, ConditionGroup) else ConditionGroup(items=[item])


def condition_to_ember(group: ConditionGroup) -> dict:
    """`ConditionalGroup.json()` shape. `Variant.from_json` loads only flat groups (its
    `Conditional.from_json` does not recurse); nested groups are for controllers."""
    return {
        "conditionals": [
            condition_to_ember(item)
            if isinstance(item, ConditionGroup)
            else {
                "left_hand": {"features": [feature_to_ember(item.feature)]},
                "right_hand": item.value,
                "operator": item.operator,
            }
            for item in group.items
        ],
        "operator": _JOIN_TO_EMBER[group.join],
    }


def _both(outer: ConditionGroup | None, inner: ConditionGroup) -> ConditionGroup:
    """A nested scope holds while its parent's condition and its own both hold."""
    return inner if outer is None else ConditionGroup(join="&", items=[outer, inner])


# -- variants ------------------------------------------------------------------------------


def _load(data: Any, what: str) -> Mapping:
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise EmberJSONError(f"{what}: not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise EmberJSONError(f"{what}: expected a JSON object")
    return data


def _edits_from_variant(edits: Any, where: str) -> list[Edit]:
    if not isinstance(edits, list):
        raise EmberJSONError(f"{where}: expected a list")
    out = []
    for i, edit in enumerate(edits):
        at = f"{where}[{i}]"
        if not isinstance(edit, Mapping):
            raise EmberJSONError(f"{at}: expected an object")
        mode = edit.get("mode", "nudge")  # glassbox's extension; the SDK only nudges
        if mode not in _MODES:
            raise EmberJSONError(f"{at}.mode: {mode!r} is not one of nudge, pin, mul, ablate")
        value = 0.0 if mode == "ablate" else _number(edit.get("value"), f"{at}.value")
        out.append(Edit(feature=feature_from_ember(edit, at), mode=mode, value=value))
    return out


def _scopes_from_variant(scopes: Any, outer: ConditionGroup | None, where: str) -> list[Scope]:
    if not isinstance(scopes, list):
        raise EmberJSONError(f"{where}: expected a list")
    out: list[Scope] = []
    for i, raw in enumerate(scopes):
        at = f"{where}[{i}]"
        scope = _load(raw, at)
        if "condition" not in scope:
            raise EmberJSONError(f"{at}: a scope needs 'condition'")
        when = _both(outer, condition_from_ember(scope["condition"], f"{at}.condition"))
        nested = _load(scope.get("nested_variant", {}), f"{at}.nested_variant")
        edits = _edits_from_variant(nested.get("edits", []), f"{at}.nested_variant.edits")
        inner = nested.get("scopes", [])
        # Variant.json() drops abort_when's event name, leaving a scope that sets nothing:
        # that is the only scope with no edits, so it reads back as an abort.
        abort = bool(scope.get("abort")) or bool(scope.get("event_name"))
        abort = abort or (not edits and not inner)
        out.append(Scope(when=when, edits=edits, abort=abort))
        out += _scopes_from_variant(inner, when, f"{at}.nested_variant.scopes")
    return out


def variant_from_ember(data: Mapping | str) -> VariantSpec:
    """What `Variant.json()` produces (conditions may still be SDK objects) or
    `Variant.from_json` accepts. Nested scopes are flattened, their conditions joined."""
    data = _load(data, "variant")
    base_model = data.get("base_model")
    if not isinstance(base_model, str) or not base_model:
        raise EmberJSONError("variant.base_model: expected the model name")
    return VariantSpec(
        base_model=base_model,
        edits=_edits_from_variant(data.get("edits", []), "variant.edits"),
        scopes=_scopes_from_variant(data.get("scopes", []), None, "variant.scopes"),
    )


def _edit_to_variant(edit: Edit) -> dict:
    item = {
        "feature_id": feature_id(edit.feature.uuid),
        "feature_label": edit.feature.label,
        "index_in_sae": edit.feature.index_in_sae,
        "value": edit.value,
    }
    if edit.mode != "nudge":
        item["mode"] = edit.mode  # the SDK ignores it (and loads the edit as a nudge)
    return item


def variant_to_ember(spec: VariantSpec) -> dict:
    """Plain JSON that `goodfire.Variant.from_json` loads. Extensions the SDK ignores:
    an edit's `mode` when it is not a nudge, a scope's `abort: true`."""
    scopes = []
    for scope in spec.scopes:
        item = {
            "base_model": spec.base_model,
            "condition": condition_to_ember(scope.when),
            "nested_variant": {
                "base_model": spec.base_model,
                "edits": [_edit_to_variant(e) for e in scope.edits],
                "scopes": [],
            },
        }
        if scope.abort:
            item["abort"] = True
        scopes.append(item)
    return {
        "base_model": spec.base_model,
        "edits": [_edit_to_variant(e) for e in spec.edits],
        "scopes": scopes,
    }


# -- controllers ---------------------------------------------------------------------------


def _interventions(data: Any, where: str) -> list[Edit]:
    if not isinstance(data, list):
        raise EmberJSONError(f"{where}: expected a list")
    out = []
    for i, raw in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise EmberJSONError(f"{at}: expected an object")
        mode = raw.get("mode")
        if mode not in _MODES:
            raise EmberJSONError(f"{at}.mode: {mode!r} is not one of nudge, pin, mul, ablate")
        value = 0.0 if mode == "ablate" else _number(raw.get("value"), f"{at}.value")
        group = raw.get("features")
        features = group.get("features") if isinstance(group, Mapping) else None
        if features is None:  # FeatureGroup.from_json also takes a lone feature
            features = [group]
        if not isinstance(features, list):
            raise EmberJSONError(f"{at}.features: expected a feature group")
        out += [
            Edit(feature=feature_from_ember(f, f"{at}.features[{j}]"), mode=mode, value=value)
            for j, f in enumerate(features)
        ]
    return out


def _controller_scopes(
    data: Any, outer: ConditionGroup | None, where: str
) -> Iterator[tuple[Scope, str | None]]:
    if not isinstance(data, list):
        raise EmberJSONError(f"{where}: expected a list")
    for i, raw in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping) or "conditionals" not in raw:
            raise EmberJSONError(f"{at}: a scope needs 'conditionals'")
        when = _both(outer, condition_from_ember(raw["conditionals"], f"{at}.conditionals"))
        inner = raw.get("controller") or {}
        if not isinstance(inner, Mapping):
            raise EmberJSONError(f"{at}.controller: expected an object")
        event = raw.get("event_name") or None
        edits = _interventions(inner.get("interventions", []), f"{at}.controller.interventions")
        yield Scope(when=when, edits=edits, abort=event is not None), event
        yield from _controller_scopes(inner.get("scopes", []), when, f"{at}.controller.scopes")


def controller_to_spec(controller_json: Mapping | None, base_model: str) -> VariantSpec:
    """The `controller` the SDK sends with a Variant (chat completions, logits, inspect).

    Values arrive unscaled: the SDK calls `Controller.json()` with its default scale=1, so a
    value is the number given to `Variant.set` (and `max_activation_strength` is always 1).
    A scope with an event name interrupts generation (abort); nested scopes are flattened
    with their parents' conditions; see `controller_event_names` for the names to report.
    """
    data = _load(controller_json or {}, "controller")
    return VariantSpec(
        base_model=base_model,
        edits=_interventions(data.get("interventions", []), "controller.interventions"),
        scopes=[
            s for s, _ in _controller_scopes(data.get("scopes", []), None, "controller.scopes")
        ],
    )


def controller_event_names(controller_json: Mapping | None) -> list[str | None]:
    """Each scope's event name, aligned with `controller_to_spec(...).scopes`: when an
    abort scope fires, its name goes into the response's `gf_event_names` and the SDK runs
    the handler (abort_when's raises InferenceAbortedException on the client)."""
    data = _load(controller_json or {}, "controller")
    return [e for _, e in _controller_scopes(data.get("scopes", []), None, "controller.scopes")]
