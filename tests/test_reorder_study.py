"""reorder_study: a tiny cell's log (parsed by plot/logs.py), heatmap binning, sentinel
cells, atomic output and the CLI."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sparsevit import cli, provenance, reorder, reorder_study
from sparsevit.errors import SparseVitError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plot"))
import logs

CELLS = [("VisionLongformer", 128, 16), ("RegionViT", 112, 4), ("DynamicViT", 128, 16)]


@pytest.fixture(scope="module")
def tag() -> str:
    """The device part of log names: 'cpu' here, the GPU's tag on a GPU machine."""
    return provenance.device_tag(provenance.collect())


def load(out: Path) -> logs.LogSet:
    logset = logs.load_dir(out, figure="reorder")
    assert logset.warnings == []
    return logset


@pytest.mark.parametrize(("model", "resolution", "patch"), CELLS)
def test_run_cell_writes_a_log_plot_logs_parses(tmp_path: Path, tag: str, model: str,
                                                resolution: int, patch: int) -> None:
    for method in reorder.METHODS:
        reorder_study.run_cell(model, resolution, patch, method, out_dir=tmp_path)
    # atomic writes: nothing but the finished logs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"reorder.{tag}.{model}.{resolution}.{m}.log" for m in reorder.METHODS)
    logset = load(tmp_path)
    for key, cell in logset.cells.items():
        assert (key.model, key.resolution, key.system) == (model, str(resolution), cell.header[
            "method"])
        assert cell.header["device"] and cell.header["numpy"] and cell.header["command"]
        n = int(cell.header["tokens"])
        nnz = int(cell.header["nnz"])
        tiles = [r for r in cell.rows if r["kind"] == "tiles"]
        assert [r["tile"] for r in tiles] == list(reorder_study.TILES)
        for row in tiles:
            assert row["status"] == "OK", row
            assert row["full"] + row["column"] + row["partial"] == row["tiles"]
            assert 0 < row["fill"] <= 1 and 0 < row["tiles_frac"] <= 1
            assert row["density"] == pytest.approx(nnz / n**2)
            assert row["reorder_s"] >= 0 and row["extract_s"] >= 0
        full = logs.decode_array(logset.expect(key, kind="heatmap", view="full"))
        zoom = logs.decode_array(logset.expect(key, kind="heatmap", view="zoom"))
        assert full.shape == (min(n, 128),) * 2 and zoom.shape == (min(n, 1024, 128),) * 2
        assert full.dtype == np.uint8 and full.any()


def test_density_bins_matches_dense() -> None:
    rng = np.random.default_rng(0)
    adj = sp.random(100, 100, density=0.1, random_state=rng, format="csr") != 0
    dense = adj.toarray()
    for extent, bins in ((100, 10), (37, 7), (5, 8)):
        got = reorder_study.density_bins(adj, extent, bins)
        b = min(bins, extent)
        edges = np.searchsorted(np.arange(extent) * b // extent, np.arange(b + 1))
        want = np.array([[dense[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean()
                          for j in range(b)] for i in range(b)])
        np.testing.assert_allclose(got, want)


def _slow(graph):
    time.sleep(30)


def _crash(graph):
    raise RuntimeError("boom")


def _unsupported(graph):
    raise SparseVitError("not for this graph")


def _not_a_permutation(graph):
    return np.zeros(graph.n_tokens, dtype=np.int64)


@pytest.mark.parametrize(("fn", "status", "reason"), [
    (_slow, "TLE", "limit"), (_crash, "FAIL", "RuntimeError: boom"),
    (_unsupported, "NS", "not for this graph"), (_not_a_permutation, "FAIL", "permutation"),
])
def test_failing_method_is_a_sentinel_cell(tmp_path: Path, tag: str,
                                           monkeypatch: pytest.MonkeyPatch, fn, status: str,
                                           reason: str) -> None:
    monkeypatch.setitem(reorder.METHODS, "bad", fn)
    t0 = time.perf_counter()
    path = reorder_study.run_cell("VisionLongformer", 128, 16, "bad", out_dir=tmp_path,
                                  time_limit=0.5)
    assert time.perf_counter() - t0 < 10
    cell = load(tmp_path).cells[logs.Key("reorder", tag, "VisionLongformer", "128", "bad")]
    assert cell.path == path
    assert len(cell.rows) == len(reorder_study.TILES) + 2
    assert all(r["status"] == status and reason in r["reason"] for r in cell.rows)


@pytest.mark.parametrize(("args", "tiles", "message"), [
    (("Swin", 128, 16, "none"), ["64x64"], "unknown model"),
    (("VisionLongformer", 128, 16, "zorder"), ["64x64"], "unknown reorder method"),
    (("VisionLongformer", 130, 16, "none"), ["64x64"], "not divisible"),
    (("VisionLongformer", 128, 16, "none"), ["48x48"], "tile sides"),
])
def test_bad_input_raises_and_writes_nothing(tmp_path: Path, args: tuple, tiles: list[str],
                                             message: str) -> None:
    with pytest.raises(SparseVitError, match=message):
        reorder_study.run_cell(*args, tiles=tiles, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, tag: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["reorder-study", "--model", "DynamicViT", "--resolution", "128",
            "--methods", "none,hilbert", "--tiles", "32x32,64x64", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"reorder.{tag}.DynamicViT.128.hilbert.log", f"reorder.{tag}.DynamicViT.128.none.log"]
    assert "hilbert: OK" in capsys.readouterr().out
    assert cli.main([*argv[:5], "--methods", "none,bogus", "--out", str(tmp_path / "x")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
