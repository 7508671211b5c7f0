"""The stage commands end to end: round trip, summaries, and every bad-input case."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from sparsevit import masks
from sparsevit.blocks import extract_tiles
from sparsevit.cli import main


def run(*args: str) -> int:
    return main(list(args))


def test_round_trip(tmp_path, capsys) -> None:
    a, a_ic, blocks = tmp_path / "A.npz", tmp_path / "A_ic.npz", tmp_path / "b.json"
    assert run("gen-adj", "--model", "VisionLongformer", "--resolution", "256", "--patch", "16",
               "--output", str(a)) == 0
    assert "16x16" in capsys.readouterr().out
    assert sp.load_npz(a).shape == (257, 257)  # 1 global + 16 x 16 local tokens
    assert run("reorder", "--method", "ic", "--input", str(a), "--output", str(a_ic)) == 0
    assert "fill_after" in capsys.readouterr().out
    reordered = masks.load(a_ic)
    assert reordered.nnz == sp.load_npz(a).nnz
    assert sorted(reordered.order.tolist()) == list(range(257))
    assert run("extract-blocks", "--input", str(a_ic), "--tile", "32x32",
               "--output", str(blocks)) == 0
    doc = json.loads(blocks.read_text())
    expected = extract_tiles(reordered.adjacency, (32, 32))
    assert doc["stats"]["tiles"] == expected.n_tiles
    assert doc["col_block"] == expected.col_block.tolist()
    greedy = tmp_path / "g.json"
    assert run("extract-blocks", "--input", str(a_ic), "--greedy", "--output", str(greedy)) == 0
    assert json.loads(greedy.read_text())["blocks"]


@pytest.mark.parametrize("model", ["RegionViT", "DynamicViT"])
def test_other_models_and_non_square(tmp_path, model) -> None:
    out = tmp_path / "g.npz"
    assert run("gen-adj", "--model", model, "--resolution", "1280x720", "--patch", "16",
               "--output", str(out)) == 0
    assert masks.load(out).grid == (45, 80)


def test_user_mask_input(tmp_path) -> None:
    np.save(tmp_path / "m.npy", np.eye(20, dtype=bool))
    out = tmp_path / "m.npz"
    assert run("gen-adj", "--input", str(tmp_path / "m.npy"), "--output", str(out)) == 0
    assert run("reorder", "--method", "hilbert", "--grid", "4x5", "--input", str(out),
               "--output", str(tmp_path / "h.npz")) == 0


def _bad_cases(tmp_path):
    good = tmp_path / "good.npz"
    run("gen-adj", "--model", "VisionLongformer", "--resolution", "64", "--output", str(good))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    rect = tmp_path / "rect.npz"
    sp.save_npz(rect, sp.csr_matrix(np.ones((3, 4))))
    out = str(tmp_path / "out.npz")
    return {
        "missing file": ["reorder", "--method", "rcm", "--input", str(tmp_path / "no.npz"),
                         "--output", out],
        "corrupt file": ["reorder", "--method", "rcm", "--input", str(corrupt), "--output", out],
        "non-square": ["gen-adj", "--input", str(rect), "--output", out],
        "unknown model": ["gen-adj", "--model", "Swin", "--output", out],
        "unknown method": ["reorder", "--method", "zigzag", "--input", str(good), "--output", out],
        "not divisible": ["gen-adj", "--model", "VisionLongformer", "--resolution", "100",
                          "--patch", "16", "--output", out],
        "window 0": ["gen-adj", "--model", "RegionViT", "--resolution", "64", "--window", "0",
                     "--output", out],
        "negative window": ["gen-adj", "--model", "VisionLongformer", "--resolution", "64",
                            "--window", "-3", "--output", out],
        "bad tile": ["extract-blocks", "--input", str(good), "--tile", "48x64", "--output",
                     str(tmp_path / "b.json")],
        "bad param": ["reorder", "--method", "ic", "--param", "nope=1", "--input", str(good),
                      "--output", out],
        "grid for rcm": ["reorder", "--method", "rcm", "--grid", "4x4", "--input", str(good),
                         "--output", out],
        "bad resolution": ["gen-adj", "--model", "DynamicViT", "--resolution", "big",
                           "--output", out],
        "bad output suffix": ["gen-adj", "--model", "DynamicViT", "--resolution", "64",
                              "--output", str(tmp_path / "out.txt")],
    }


def test_bad_inputs_one_line_exit_2(tmp_path, capsys) -> None:
    for name, argv in _bad_cases(tmp_path).items():
        capsys.readouterr()
        assert run(*argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("sparsevit: error:") and "\n" not in err, (name, err)
        assert "Traceback" not in err
        leftovers = [p.name for p in tmp_path.iterdir()
                     if p.name.startswith(("out", "b.json", "."))]
        assert not leftovers, (name, leftovers)


def test_module_entry_point_exit_code(tmp_path) -> None:
    """`python -m sparsevit` exits 2 with one stderr line and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "sparsevit", "gen-adj", "--model", "Nope",
                           "--output", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()
