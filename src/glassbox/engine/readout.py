"""Feature readout during generation: each generated token's top features, read in the forward
pass that chose it.

A row's `Readout` (in its SamplingParams) names a `FeatureEncoder`, plain tensors that turn a
residual vector at one layer into feature activations (a dictionary's read matrix and bias,
and an SAE's activation function; glassbox.features builds it), and how many features to
report. `ReadoutHook` rides the model's layer hook after the rows' steering: at each encoder's
layer it copies the residual rows that asked for it (the position whose logits give the row's
next token), and `results` then runs one matmul per encoder for all the rows sharing it and
one top-k. The activations are those of the position the token was sampled from, so the
readout of generated token i is what inspection reports at the position before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ACTIVATIONS = ("linear", "relu", "jumprelu", "topk")


@dataclass(frozen=True, eq=False)
class FeatureEncoder:
    """Residual vector at `layer` -> activations: f(h @ weight.T + bias), f by `activation`
    (linear, relu, jumprelu with `threshold`, topk keeping `top` of them). Compared by
    identity: rows that share the object share one matmul."""

    name: str
    layer: int
    weight: torch.Tensor  # [n_features, hidden]
    bias: torch.Tensor  # [n_features]
    activation: str = "linear"
    threshold: torch.Tensor | None = None  # jumprelu
    top: int | None = None  # topk

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")

    def __len__(self) -> int:
        return self.weight.shape[0]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """[R, hidden] -> [R, n_features]."""
        pre = torch.addmm(self.bias, h, self.weight.T)
        if self.activation == "linear":
            return pre
        if self.activation == "relu":
            return pre.relu_()
        if self.activation == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        top = torch.topk(pre, self.top, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())


@dataclass(frozen=True)
class Readout:
    """A row's readout: the `k` strongest features of `encoder` at every generated token."""

    encoder: FeatureEncoder
    k: int


@dataclass(frozen=True)
class TokenFeatures:
    """One token's top features: indices into the encoder's features, strongest first."""

    indices: list[int]
    activations: list[float]


def top_features(encoder: FeatureEncoder, h: torch.Tensor, ks: list[int]) -> list[TokenFeatures]:
    """Row r of `h` [R, hidden] -> its `ks[r]` strongest features, leaving out those that do
    not fire (activation exactly 0, below an SAE's or a concept's threshold): one matmul and
    one top-k for all rows."""
    acts = encoder(h)
    k = min(max(ks), acts.shape[1])
    values, indices = torch.topk(acts, k, dim=-1)
    values, indices = values.tolist(), indices.tolist()  # two copies, not one per row
    out = []
    for r, n in enumerate(ks):
        fired = [(i, v) for i, v in zip(indices[r][:n], values[r][:n], strict=True) if v != 0.0]
        out.append(TokenFeatures([i for i, _ in fired], [v for _, v in fired]))
    return out


class ReadoutHook:
    """A LayerHook that copies, at their encoders' layers, the residual of the rows with a
    readout; `results` turns them into each row's top features. It never changes `h`."""

    def __init__(self, readouts: list[Readout | None]):
        """`readouts`: per row that gets a token this step (in order), its readout or None."""
        self.readouts = readouts
        self.groups: dict[FeatureEncoder, list[int]] = {}
        for row, r in enumerate(readouts):
            if r is not None:
                self.groups.setdefault(r.encoder, []).append(row)
        self.rows: dict[int, list[int]] = {}  # layer -> the rows read there, in order
        for encoder, rows in self.groups.items():
            self.rows[encoder.layer] = sorted(self.rows.get(encoder.layer, []) + rows)
        self._index: dict[int, torch.Tensor] = {}
        self._captured: dict[int, torch.Tensor] = {}
        self.bind(None)

    @classmethod
    def of(cls, readouts: list[Readout | None]) -> ReadoutHook | None:
        """The hook, or None when no row asks for a readout."""
        if all(r is None for r in readouts):
            return None
        return cls(readouts)

    def bind(self, positions: torch.Tensor | None) -> None:
        """Where each row's token is in the forward pass's [tokens, hidden]: `positions[row]`
        (a prefill), or row i at i (None: a decode step)."""
        for layer, rows in self.rows.items():
            index = torch.tensor(rows, dtype=torch.long)
            self._index[layer] = index if positions is None else positions[index]

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        index = self._index.get(layer)
        if index is not None:
            self._captured[layer] = h.index_select(0, index)
        return h

    def results(self) -> dict[int, TokenFeatures]:
        """Row -> its token's top features (rows with a readout only)."""
        out: dict[int, TokenFeatures] = {}
        for encoder, rows in self.groups.items():
            h = self._captured[encoder.layer]
            at_layer = self.rows[encoder.layer]
            if len(rows) < len(at_layer):  # other encoders read this layer too
                local = [at_layer.index(r) for r in rows]
                h = h.index_select(0, torch.tensor(local, dtype=torch.long))
            found = top_features(encoder, h, [self.readouts[r].k for r in rows])
            out.update(zip(rows, found, strict=True))
        self._captured.clear()
        return out
