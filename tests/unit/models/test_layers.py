"""Weight formats: 'q4' keeps 4-bit weights 4-bit, and every quantized kernel computes the
rows of a batch independently (so a seeded request does not depend on its batch)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from glassbox.models.layers import INT4_GROUP, Linear
from glassbox.models.llama import LlamaModel


def _q4_weight(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """A weight as a GGUF Q4_1 block stores it: scale * code + min per group of 32 inputs."""
    g = torch.Generator().manual_seed(seed)
    groups = in_features // INT4_GROUP
    codes = torch.randint(0, 16, (out_features, groups, INT4_GROUP), generator=g).float()
    codes[..., 0], codes[..., 1] = 0, 15  # Q4_1's minimum and maximum are attained
    scale = torch.rand(out_features, groups, 1, generator=g) * 0.01 + 1e-3
    low = -torch.rand(out_features, groups, 1, generator=g) * 0.08
    return (codes * scale + low).view(out_features, in_features)


def test_q4_keeps_a_4_bit_weight_4_bit_and_reproduces_it():
    w = _q4_weight(96, 128)
    lin = Linear(w, None, "q4")
    assert lin.fmt == "int4"
    x = torch.randn(3, 128)
    exact = x @ w.T
    err = (lin(x.bfloat16()).float() - exact).abs().max() / exact.abs().max()
    assert err < 0.01  # bf16 activations and scales; the codes themselves are exact


def test_q4_makes_other_weights_int8():
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(1))
    lin = Linear(w, None, "q4")
    assert lin.fmt == "int8"
    x = torch.randn(3, 128)
    exact = x @ w.T
    assert (lin(x.bfloat16()).float() - exact).abs().max() / exact.abs().max() < 0.02


def test_forced_int4_quantizes_any_weight():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    assert Linear(w, None, "int4").fmt == "int4"
    assert Linear(torch.randn(64, 48), None, "int4").fmt == "int8"  # 48 is not groups of 32


@pytest.mark.parametrize("fmt", ["int4", "int8", "bfloat16"])
def test_quantized_rows_do_not_depend_on_the_batch(fmt):
    lin = Linear(_q4_weight(256, 192, seed=3), None, fmt)
    x = torch.randn(16, 192, generator=torch.Generator().manual_seed(4)).bfloat16()
    batched = lin(x)
    one_by_one = torch.cat([lin(x[i : i + 1]) for i in range(16)])
    assert torch.equal(batched, one_by_one)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_dense_prefill_weights_are_the_dequantized_codes(fmt):
    """Prefill may multiply by a bf16 copy of the quantized weights: the same weights as the
    decode kernel, so prefill and decode agree to bf16 rounding."""
    lin = Linear(_q4_weight(96, 128, seed=5), None, fmt, "bfloat16")
    x = torch.randn(40, 128, generator=torch.Generator().manual_seed(6)).bfloat16()
    quantized, dense = lin(x).float(), lin(x, dense=True).float()
    assert (quantized - dense).abs().max() / quantized.abs().max() < 0.01
    one_by_one = torch.cat([lin(x[i : i + 1], dense=True) for i in range(40)])
    assert torch.equal(lin(x, dense=True), one_by_one)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_kernel_prefill_keeps_no_second_copy(fmt):
    w = _q4_weight(96, 128, seed=7)
    lin = Linear(w, None, fmt, "kernel")
    assert lin.dense is None
    x = torch.randn(40, 128, generator=torch.Generator().manual_seed(8)).bfloat16()
    assert torch.equal(lin(x, dense=True), lin(x))  # prefill runs the quantized kernel
    with_copy = Linear(w, None, fmt, "bfloat16")
    assert lin.weight_bytes() < with_copy.weight_bytes() / 2


@pytest.mark.parametrize("fmt", ["float32", "int8", "q4"])
def test_a_loaded_model_keeps_no_map_of_its_weight_files(tiny_dir, fmt):
    """safetensors tensors are views of a memory map of the file: a model that kept one
    (a norm weight, an embedding) kept the whole file resident beside its own weights."""
    model = LlamaModel.load(tiny_dir, fmt)
    gc.collect()
    names = {f.name for f in tiny_dir.glob("*.safetensors")}
    mapped = []  # this file may be mapped by others in the process (transformers' models)
    for line in Path("/proc/self/maps").read_text().splitlines():
        if any(line.endswith("/" + n) for n in names):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            mapped.append((lo, hi))
    held = [model.embed, model.head_rows, model.norm]
    for layer in model.layers:
        held += [layer.input_norm, layer.post_norm]
    for lin in model.linears():
        held += [t for t in (lin.weight, lin.scales, lin.dense, lin.bias) if t is not None]
    pointers = [t.untyped_storage().data_ptr() for t in held]
    assert not [p for p in pointers for lo, hi in mapped if lo <= p < hi]
