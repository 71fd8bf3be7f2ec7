"""Steering inside the batch: every row brings its own plan, applied at the layer hook.

A `SteeringPlan` is one variant resolved against the feature dictionaries: per layer, the
edits (read vector, write vector, mode, value) and the conditional scopes. `BatchSteering`
stacks the plans of one step's rows into a few tensors per steered layer, so applying every
row's edits is two small matmuls and some elementwise work per steered layer, whatever the
number of variants in the batch; unsteered rows get zero coefficients.

With a(h) = h @ read + read_bias (the feature's activation) and w the write vector:
    nudge v: h += v * w             pin v: h += (v - a) * w
    mul v:   h += (v - 1) * a * w   ablate: h += (0 - a) * w
Scopes gate their edits per token by a condition on feature activations read at the same
layer, before that layer's edits; an abort scope marks the row, and the engine ends it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

_COMPARE = {
    "==": lambda a, v: torch.isclose(a, torch.full_like(a, v), atol=1e-3),
    "!=": lambda a, v: ~torch.isclose(a, torch.full_like(a, v), atol=1e-3),
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Direction:
    """One feature's read/write vectors at a layer. `key` identifies it across rows."""

    key: str
    layer: int
    read: torch.Tensor  # [hidden]
    read_bias: float
    write: torch.Tensor  # [hidden]


@dataclass(frozen=True)
class ResolvedEdit:
    direction: Direction
    mode: str  # nudge | pin | mul | ablate
    value: float


@dataclass(frozen=True)
class ResolvedCondition:
    direction: Direction
    op: str
    value: float


@dataclass(frozen=True)
class ResolvedGroup:
    join: str  # "&" | "|"
    items: tuple[ResolvedCondition | ResolvedGroup, ...]

    def directions(self) -> list[Direction]:
        out: list[Direction] = []
        for item in self.items:
            out.extend(item.directions() if isinstance(item, ResolvedGroup) else [item.direction])
        return out


@dataclass(frozen=True)
class ResolvedScope:
    layer: int  # where the condition is read and the scope's edits apply
    when: ResolvedGroup
    edits: tuple[ResolvedEdit, ...]
    abort: bool


@dataclass
class SteeringPlan:
    edits: list[ResolvedEdit] = field(default_factory=list)
    scopes: list[ResolvedScope] = field(default_factory=list)

    def layers(self) -> set[int]:
        return {e.direction.layer for e in self.edits} | {s.layer for s in self.scopes}

    @property
    def is_empty(self) -> bool:
        return not self.edits and not self.scopes

    def combined(self, other: SteeringPlan) -> SteeringPlan:
        """Both plans' edits and scopes (nudges of one feature add up)."""
        return SteeringPlan(self.edits + other.edits, self.scopes + other.scopes)


class _EditSet:
    """Coefficients of one group of edits (the unconditional ones, or one scope) for every
    row at one layer, over that layer's union of directions."""

    def __init__(self, num_rows: int, num_dirs: int):
        self.nudge = torch.zeros(num_rows, num_dirs)
        self.pin_mask = torch.zeros(num_rows, num_dirs)
        self.pin_value = torch.zeros(num_rows, num_dirs)
        self.mul = torch.zeros(num_rows, num_dirs)  # (v - 1) for mul edits, 0 elsewhere
        self.used = False
        self.has_pin = False
        self.has_mul = False

    def add(self, row: int, col: int, edit: ResolvedEdit) -> None:
        self.used = True
        if edit.mode == "nudge":
            self.nudge[row, col] += edit.value
        elif edit.mode in ("pin", "ablate"):
            self.has_pin = True
            self.pin_mask[row, col] = 1.0
            self.pin_value[row, col] = 0.0 if edit.mode == "ablate" else edit.value
        elif edit.mode == "mul":
            self.has_mul = True
            self.mul[row, col] = edit.value - 1.0
        else:
            raise ValueError(f"unknown edit mode {edit.mode!r}")

    def coefficients(self, acts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[T, F] amounts of each write vector to add, given activations [T, F]."""
        coef = self.nudge[rows]
        if self.has_pin:
            pm = self.pin_mask[rows]
            coef = coef + pm * (self.pin_value[rows] - acts)
        if self.has_mul:
            coef = coef + self.mul[rows] * acts
        return coef


@dataclass
class _LayerPlan:
    read: torch.Tensor  # [F, hidden]
    read_bias: torch.Tensor  # [F]
    write: torch.Tensor  # [F, hidden]
    base: _EditSet
    # (rows, the scope's index in its plan, scope, edits)
    scopes: list[tuple[list[int], int, ResolvedScope, _EditSet]]
    column: dict[str, int]


class BatchSteering:
    """The layer hook for one step: rows are sequences; `token_rows[t]` is token t's row."""

    def __init__(self, plans: list[SteeringPlan | None], token_rows: torch.Tensor):
        self.token_rows = token_rows
        self.aborted: dict[int, int] = {}  # row -> index in its plan of the abort scope that held
        self.layers: dict[int, _LayerPlan] = {}
        by_layer: dict[int, dict[str, Direction]] = {}
        for plan in plans:
            if plan is None:
                continue
            for e in plan.edits:
                by_layer.setdefault(e.direction.layer, {})[e.direction.key] = e.direction
            for s in plan.scopes:
                dirs = by_layer.setdefault(s.layer, {})
                for d in s.when.directions() + [e.direction for e in s.edits]:
                    dirs[d.key] = d
        n = len(plans)
        for layer, dirs in by_layer.items():
            order = list(dirs.values())
            column = {d.key: i for i, d in enumerate(order)}
            self.layers[layer] = _LayerPlan(
                read=torch.stack([d.read for d in order]),
                read_bias=torch.tensor([d.read_bias for d in order]),
                write=torch.stack([d.write for d in order]),
                base=_EditSet(n, len(order)),
                scopes=[],
                column=column,
            )
        for row, plan in enumerate(plans):
            if plan is None:
                continue
            for e in plan.edits:
                lp = self.layers[e.direction.layer]
                lp.base.add(row, lp.column[e.direction.key], e)
            for k, s in enumerate(plan.scopes):
                lp = self.layers[s.layer]
                edits = _EditSet(n, len(lp.column))
                for e in s.edits:
                    edits.add(row, lp.column[e.direction.key], e)
                lp.scopes.append(([row], k, s, edits))

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        lp = self.layers.get(layer)
        if lp is None:
            return h
        rows = self.token_rows
        acts = h @ lp.read.T + lp.read_bias  # [T, F], read before this layer's edits
        coef = lp.base.coefficients(acts, rows) if lp.base.used else None
        for scope_rows, index, scope, edits in lp.scopes:
            in_rows = torch.zeros(len(rows), dtype=torch.bool)
            for r in scope_rows:
                in_rows |= rows == r
            gate = in_rows & self._holds(scope.when, acts, lp.column)
            if not bool(gate.any()):
                continue
            if scope.abort:
                for r in rows[gate].unique().tolist():
                    self.aborted.setdefault(r, index)
                continue
            scoped = edits.coefficients(acts, rows) * gate[:, None]
            coef = scoped if coef is None else coef + scoped
        if coef is None:
            return h
        return h + coef @ lp.write

    def _holds(self, group: ResolvedGroup, acts: torch.Tensor, column: dict[str, int]):
        results = []
        for item in group.items:
            if isinstance(item, ResolvedGroup):
                results.append(self._holds(item, acts, column))
            else:
                a = acts[:, column[item.direction.key]]
                results.append(_COMPARE[item.op](a, item.value))
        out = results[0]
        for r in results[1:]:
            out = (out & r) if group.join == "&" else (out | r)
        return out
