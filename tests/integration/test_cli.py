"""The glassbox command line: `features build` and `chat` in-process."""

from __future__ import annotations

from glassbox.cli import main
from glassbox.features.concepts import load_concept_data


def test_features_build_writes_the_concept_cache(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path))
    args = ["features", "build", "--model", str(tiny_model_dir), "--dtype", "float32"]
    assert main([*args, "--layer", "1"]) == 0
    out = capsys.readouterr().out
    n = len(load_concept_data().concepts)
    assert f"{n} concept vectors at layer 1" in out
    cached = list((tmp_path / "features").glob("*-concepts-L1-*.safetensors"))
    assert len(cached) == 1
    first = cached[0].stat().st_mtime_ns
    assert main([*args, "--layer", "1"]) == 0  # "build" always rebuilds
    assert cached[0].stat().st_mtime_ns > first


def test_chat_in_process_streams_an_answer(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path))
    args = ["chat", "Hello", "--model", str(tiny_model_dir), "--dtype", "float32"]
    assert main([*args, "--max-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()
