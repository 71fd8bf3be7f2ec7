"""The weight format is chosen by measurement: timed for the model's shapes, checked for
quality against float32, cached per CPU and model."""

from __future__ import annotations

import json

import pytest
import torch

from glassbox.config import Settings
from glassbox.models import kernels
from glassbox.models.kernels import FormatResult, KernelChoice
from glassbox.models.llama import REFINED_LOGITS, LlamaModel
from glassbox.models.loader import ResolvedModel
from glassbox.runtime import weight_formats


def _result(fmt, one, batch, ppl=10.0, top1=1.0, prefill=None) -> FormatResult:
    return FormatResult(fmt, one, batch, ppl, top1, prefill or {"kernel": 1.0})


def test_the_fastest_format_that_keeps_the_quality_wins():
    results = [
        _result("float32", 40.0, 70.0),
        _result("bfloat16", 16.0, 226.0),  # fast alone, slow in a batch (AVX2)
        _result("int8", 7.9, 60.5),
        _result("int4", 10.5, 58.2),
    ]
    assert kernels.pick(results, 10.0).fmt == "int8"
    # the same speeds, but int8 changes the top-1 token too often and int4 the perplexity
    results[2] = _result("int8", 7.9, 60.5, top1=0.96)
    results[3] = _result("int4", 10.5, 58.2, ppl=10.3)
    assert kernels.pick(results, 10.0).fmt == "float32"


def test_quality_bounds_are_the_issue_s():
    assert _result("q4", 1, 1, ppl=10.2, top1=0.97).keeps_quality(10.0)
    assert not _result("q4", 1, 1, ppl=10.21, top1=0.99).keeps_quality(10.0)
    assert not _result("q4", 1, 1, ppl=10.0, top1=0.969).keeps_quality(10.0)


def test_prefill_takes_the_fastest_option():
    r = _result("q4", 1, 1, prefill={"kernel": 30.0, "bfloat16": 12.0})
    assert r.prefill_choice() == "bfloat16"
    r = _result("q4", 1, 1, prefill={"kernel": 30.0, "bfloat16": 226.0})  # AVX2 alone
    assert r.prefill_choice() == "kernel"


@pytest.fixture(scope="module")
def measured(tiny_model_dir) -> KernelChoice:
    return kernels.measure(tiny_model_dir, batch=4)


def test_measuring_times_and_checks_every_candidate(measured):
    assert [r.fmt for r in measured.results] == list(kernels.CANDIDATES)
    reference = measured.results[0]
    assert reference.top1 == 1.0 and reference.perplexity == measured.reference_perplexity
    for r in measured.results:
        assert r.decode_ms > 0 and r.batch_ms > 0 and r.perplexity > 1
        assert 0 <= r.top1 <= 1
        assert set(r.prefill_ms) == (
            {"kernel"} if r.fmt in ("float32", "bfloat16") else {"kernel", "bfloat16"}
        )
    chosen = measured.result(measured.fmt)
    assert chosen.keeps_quality(measured.reference_perplexity)
    assert measured.prefill == chosen.prefill_choice()
    table = measured.table()
    assert f"chosen: {measured.fmt}" in table and "flags:" in table


def test_the_choice_is_cached_per_cpu_and_model(measured, tmp_path, monkeypatch):
    path = kernels.save(measured, tmp_path, "model-a")
    assert kernels.cached(tmp_path, "model-a", 4) == measured
    assert kernels.cached(tmp_path, "model-b", 4) is None  # another model
    assert kernels.cached(tmp_path, "model-a", 8) is None  # another full batch
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # other kernels: measure again
    assert kernels.cache_file(tmp_path, "model-a", 4) != path
    assert kernels.cached(tmp_path, "model-a", 4) is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    path.write_text("{not json")
    assert kernels.cached(tmp_path, "model-a", 4) is None  # damaged: measured again


def test_auto_uses_the_cached_choice_and_a_forced_dtype_wins(measured, tiny_model_dir, tmp_path):
    model = ResolvedModel(tiny_model_dir, "tiny")
    forced = Settings(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="int8",
                      prefill_weights="kernel")  # fmt: skip
    assert weight_formats(forced, model) == ("int8", "kernel")
    assert not (tmp_path / "kernels").exists()  # nothing to measure
    dense = Settings(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="float32")
    assert weight_formats(dense, model) == ("float32", "kernel")
    assert not (tmp_path / "kernels").exists()
    # 'auto' reads the cached measurement: plant one whose choice the tiny model would not
    # make by itself, and see it used
    planted = KernelChoice(
        fmt="int4", prefill="kernel", batch=32, cpu=kernels.cpu_signature(),
        reference_perplexity=measured.reference_perplexity, results=(
            _result("float32", 9.0, 9.0),
            _result("int4", 1.0, 1.0, prefill={"kernel": 1.0, "bfloat16": 2.0}),
        ),
    )  # fmt: skip
    kernels.save(planted, tmp_path, model.fingerprint)
    auto = Settings(model=str(tiny_model_dir), cache_dir=tmp_path, max_num_seqs=32)
    assert weight_formats(auto, model) == ("int4", "kernel")


def test_auto_measures_once_and_caches(tiny_model_dir, tmp_path):
    model = ResolvedModel(tiny_model_dir, "tiny")
    settings = Settings(model=str(tiny_model_dir), cache_dir=tmp_path, max_num_seqs=4)
    fmt, _ = weight_formats(settings, model)
    [path] = (tmp_path / "kernels").iterdir()
    saved = json.loads(path.read_text())
    assert saved["fmt"] == fmt and saved["batch"] == 4
    stamp = path.stat().st_mtime_ns
    assert weight_formats(settings, model)[0] == fmt
    assert path.stat().st_mtime_ns == stamp  # read, not measured again


def test_bf16_logits_are_refined_in_float32(tiny_model_dir):
    """The LM head's bf16 output is too coarse near ties; the largest logits of every row are
    recomputed in float32 from the float32 head rows, independently of the batch."""
    model = LlamaModel.load(tiny_model_dir, "int8")
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    logits = model.logits(hidden)
    exact = hidden @ model.head_rows.T
    coarse = model.lm_head(hidden.bfloat16()).float()
    top = coarse.topk(REFINED_LOGITS, dim=-1).indices
    assert torch.allclose(logits.gather(1, top), exact.gather(1, top), atol=1e-5)
    assert not torch.equal(logits.gather(1, top), coarse.gather(1, top))
    rest = torch.ones_like(logits, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(logits[rest], coarse[rest])  # the tail keeps the kernel's values
    assert torch.equal(torch.cat([model.logits(hidden[i : i + 1]) for i in range(5)]), logits)
