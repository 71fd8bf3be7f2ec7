"""Weight formats for the linear layers of the forward pass.

On this kind of CPU the matmuls decide the speed of a decode step (see DESIGN.md): int8
weight-only with bf16 activations is ~6x faster than fp32 at batch 1. The fp32 path stays
exact and is what the logits-match-transformers tests use.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

WeightFormat = Literal["float32", "bfloat16", "int8"]


class Linear:
    """y = x @ W.T (+ b), with W stored in one of the weight formats.

    Inputs and outputs are in the activation dtype of the format: float32 for 'float32',
    bfloat16 for 'bfloat16' and 'int8'.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: WeightFormat):
        self.fmt = fmt
        self.out_features, self.in_features = weight.shape
        if fmt == "int8":
            # Symmetric per-output-channel scales: the layout _weight_int8pack_mm expects.
            # In-place on one float32 copy: this runs over every weight at start-up.
            w = weight.to(torch.float32, copy=True)
            scales = w.abs().amax(dim=1).clamp_(min=1e-8).div_(127.0)
            self.weight = w.div_(scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)
            self.scales = scales.to(torch.bfloat16)
        else:
            self.weight = weight.to(torch.bfloat16 if fmt == "bfloat16" else torch.float32)
            self.scales = None
        act = activation_dtype(fmt)
        self.bias = None if bias is None else bias.to(act)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales is not None:
            y = torch._weight_int8pack_mm(x, self.weight, self.scales)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def nbytes(self) -> int:
        n = self.weight.numel() * self.weight.element_size()
        return n + (0 if self.scales is None else self.scales.numel() * 2)


def activation_dtype(fmt: WeightFormat) -> torch.dtype:
    return torch.float32 if fmt == "float32" else torch.bfloat16
