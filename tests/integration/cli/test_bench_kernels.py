"""`glassbox bench kernels`: measures every weight format on this CPU, prints the table and
caches the choice that a server with `--dtype auto` then loads."""

from __future__ import annotations

from glassbox.cli import main
from glassbox.config import Settings
from glassbox.models import kernels
from glassbox.models.loader import model_fingerprint
from glassbox.runtime import load_engine


def test_bench_kernels_prints_the_table_and_caches_what_auto_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path))
    assert main(["bench", "kernels", "--model", str(tiny_model_dir), "--max-num-seqs", "4"]) == 0
    out = capsys.readouterr().out
    for fmt in kernels.CANDIDATES:
        assert f"\n{fmt} " in out
    assert "flags:" in out and "chosen: " in out
    chosen = out.split("chosen: ")[1].split(",")[0]
    [cache] = (tmp_path / "kernels").iterdir()
    assert str(cache) in out
    stamp = cache.stat().st_mtime_ns
    settings = Settings(model=str(tiny_model_dir), cache_dir=tmp_path, max_num_seqs=4)
    engine, _ = load_engine(settings)
    assert engine.model.fmt == chosen
    assert kernels.cached(tmp_path, model_fingerprint(tiny_model_dir), 4).fmt == chosen
    assert cache.stat().st_mtime_ns == stamp  # the server read the choice, measured nothing
    assert main(["bench", "kernels", "--model", str(tiny_model_dir), "--max-num-seqs", "4"]) == 0
    assert cache.stat().st_mtime_ns > stamp  # the command always measures again
