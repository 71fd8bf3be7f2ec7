"""Weight formats for the linear layers of the forward pass.

On CPU the weight matmuls decide the speed of a decode step: at batch 1 it is a matter of
how many weight bytes each step reads. Formats:

- 'float32': exact; what the logits-match-transformers tests use.
- 'bfloat16': bf16 weights and activations.
- 'int8': int8 weight-only, symmetric per output channel, bf16 activations
  (`torch._weight_int8pack_mm`).
- 'int4': 4-bit weight-only, asymmetric per group of 32 inputs, bf16 activations
  (`_weight_int4pack_mm_for_cpu`). A GGUF Q4_0/Q4_1 weight *is* 4-bit per group of 32, so
  this reproduces it instead of re-quantizing it (and reads half the bytes of int8).
- 'q4': int4 for every linear whose weights are exactly 4-bit per group (within float
  rounding), int8 for the rest. Both kernels compute each row of a batch independently, so
  a sequence's logits do not depend on what else is in the batch (seeds reproduce).

Which one is fastest depends on the CPU (bf16 matmuls are fast with AVX512-BF16 and slow
with AVX2 alone): models/kernels.py measures them.

Prefill (many rows at once) may use other weights than decode (`PrefillWeights`): the
quantized kernels read few bytes, which wins at decode batch sizes, but some CPUs run a
bf16 matmul over many rows several times faster (and with AVX2 alone, not). 'kernel'
keeps no second copy. (A float32 copy is no option: float32 matmuls give a row different
low bits depending on how many rows are multiplied with it, so a prompt's logits would
depend on what else is prefilled with it.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

WeightFormat = Literal["float32", "bfloat16", "int8", "int4", "q4"]
PrefillWeights = Literal["kernel", "bfloat16"]

INT4_GROUP = 32
# A weight counts as 4-bit when re-quantizing it moves no value by more than this fraction
# of its group's step (float32 rounding of the dequantized GGUF values, nothing more).
_INT4_LOSSLESS = 1e-3


class Linear:
    """y = x @ W.T (+ b), with W stored in one of the weight formats.

    Inputs and outputs are in the activation dtype of the format: float32 for 'float32',
    bfloat16 for the others.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        fmt: WeightFormat,
        prefill: PrefillWeights = "bfloat16",
    ):
        self.out_features, self.in_features = weight.shape
        self.weight: torch.Tensor
        self.scales: torch.Tensor | None = None
        # For quantized formats, a bf16 copy of the *dequantized* weights for prefill
        # (`dense=True`); None with 'kernel' and for dense formats.
        self.dense: torch.Tensor | None = None
        dequantized: torch.Tensor | None = None
        # the CPU int4 kernel packs outputs by 16 and inputs by groups
        packable = self.out_features % 16 == 0 and self.in_features % INT4_GROUP == 0
        if fmt in ("int4", "q4") and packable:
            packed = _int4_pack(weight, require_lossless=fmt == "q4")
            if packed is not None:
                fmt = "int4"
                self.weight, self.scales, dequantized = packed
        if fmt == "q4" or (fmt == "int4" and self.scales is None):
            fmt = "int8"
        if fmt == "int8":
            # Symmetric per-output-channel scales: the layout _weight_int8pack_mm expects.
            # In-place on one float32 copy: this runs over every weight at start-up.
            w = weight.to(torch.float32, copy=True)
            scales = w.abs().amax(dim=1).clamp_(min=1e-8).div_(127.0)
            self.weight = w.div_(scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)
            self.scales = scales.to(torch.bfloat16)
            if prefill != "kernel":
                dequantized = self.weight.float() * self.scales.float()[:, None]
        elif fmt in ("float32", "bfloat16"):
            self.weight = weight.to(activation_dtype(fmt), copy=True)  # not a view of a file map
        if dequantized is not None and prefill != "kernel":
            self.dense = dequantized.to(torch.bfloat16)
        self.fmt: WeightFormat = fmt
        self.bias = None if bias is None else bias.to(activation_dtype(fmt))

    def __call__(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """`dense`: use the dense prefill weights when there are (many rows: prefill)."""
        if dense and self.dense is not None:
            return F.linear(x, self.dense, self.bias)
        if self.fmt == "int4":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, INT4_GROUP, self.scales)
        elif self.fmt == "int8":
            y = torch._weight_int8pack_mm(x, self.weight, self.scales)
        else:
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y + self.bias

    def weight_bytes(self) -> int:
        """Bytes held for this layer's weights (codes, scales and any prefill copy)."""
        held = [self.weight, self.scales, self.dense, self.bias]
        return sum(t.numel() * t.element_size() for t in held if t is not None)


def _int4_pack(
    weight: torch.Tensor, require_lossless: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Asymmetric 4-bit codes per group of 32 inputs, packed for the CPU int4 kernel.

    Returns (packed codes, scales and zeros, dequantized float32 weights), or None when
    `require_lossless` and the weight is not 4-bit to begin with.
    The kernel computes w = (q - 8) * scale + zero, so zero = group minimum + 8 * scale.
    """
    n, k = weight.shape
    w = weight.to(torch.float32).view(n, k // INT4_GROUP, INT4_GROUP)
    lo = w.amin(dim=-1, keepdim=True)
    scale = (w.amax(dim=-1, keepdim=True) - lo).clamp_(min=1e-10).div_(15.0)
    codes = (w - lo).div_(scale).round_().clamp_(0, 15)
    if require_lossless:
        error = (codes * scale + lo - w).abs().div_(scale).amax()
        if float(error) > _INT4_LOSSLESS:
            return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.view(n, k).to(torch.int32), 1)
    scale_b = scale.to(torch.bfloat16)
    zero_b = (lo + 8 * scale).to(torch.bfloat16)
    scales_zeros = torch.stack([scale_b.view(n, -1).t(), zero_b.view(n, -1).t()], dim=-1)
    # exactly what the kernel computes from the codes: (q - 8) * scale + zero
    dequantized = ((codes - 8) * scale_b.float() + zero_b.float()).view(n, k)
    return packed, scales_zeros.contiguous(), dequantized


def activation_dtype(fmt: WeightFormat) -> torch.dtype:
    return torch.float32 if fmt == "float32" else torch.bfloat16
