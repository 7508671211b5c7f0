"""plot/ablation.py and plot/overhead.py on crafted log directories: every bar, the
speedup titles, ILP vs greedy, prediction error, and missing / OOM cells as marks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plot"))

import ablation as ablation_plot  # noqa: E402
import overhead as overhead_plot  # noqa: E402


def write_log(path: Path, row: dict) -> None:
    path.write_text(f"# sparsevit-log v1\n# device: h200\nRESULT {json.dumps(row)}\n")


def ok(median: float, **extra) -> dict:
    return {"status": "OK", "median_us": median, "p20_us": 0.98 * median,
            "p80_us": 1.02 * median, **extra}


def cells_file(tmp_path: Path) -> Path:
    path = tmp_path / "cells.txt"
    path.write_text("M 16 256\n")
    return path


def test_ablation_plot_titles_tables_and_marks(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    name = "ablation.h200.M.256.{}.log"
    write_log(logs_dir / name.format("flash"), ok(200.0))
    write_log(logs_dir / name.format("flex"), ok(150.0))
    for i, r in enumerate(ablation_plot.REORDERS):
        base = 100.0 + 10 * i
        write_log(logs_dir / name.format(f"{r}-fixed"), ok(base, predicted_us=0.9 * base))
        write_log(logs_dir / name.format(f"{r}-greedy"), ok(0.9 * base, predicted_us=0.9 * base))
        if r != "ic":  # ic-ilp missing -> NS mark and a warning
            write_log(logs_dir / name.format(f"{r}-ilp"),
                      ok(0.75 * base, predicted_us=0.8 * base))
    write_log(logs_dir / name.format("rcm-greedy"), {"status": "OOM", "reason": "oom"})
    (logs_dir / "stray.txt").write_text("not a log")
    out_dir = tmp_path / "fig"
    assert ablation_plot.main(["--log-dir", str(logs_dir), "--out", str(out_dir),
                               "--cells", str(cells_file(tmp_path))]) == 0
    assert (out_dir / "ablation.pdf").stat().st_size > 0
    assert (out_dir / "ablation.png").stat().st_size > 0
    out, err = capsys.readouterr()
    # ours = best ILP bar (none-ilp, 75 us) over the best baseline (flex, 150 us)
    assert "2.00x" in out and "none-ilp" in out
    # ILP vs greedy over the 3 reorders where both ran (rcm greedy OOM, ic ilp missing)
    assert "3/3" in out
    assert "+6.7%" in out  # ILP predicted 0.8 b vs measured 0.75 b
    assert "missing cell ablation.h200.M.256.ic-ilp: drawn as NS" in err
    assert "stray.txt" in err


def test_ablation_plot_rejects_a_missing_dir(tmp_path: Path) -> None:
    assert ablation_plot.main(["--log-dir", str(tmp_path / "nope"), "--out",
                               str(tmp_path / "fig")]) == 2


def test_overhead_plot_amortisation_table(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    stages = {"graph_s": 0.1, "reorder_s": 0.2, "solve_s": 0.5, "extract_s": 0.2,
              "profile_s": 120.0}
    write_log(logs_dir / "overhead.h200.M.256.sparsevit.log",
              ok(50.0, stages=stages, best_baseline="sdpa_cudnn", best_baseline_us=150.0,
                 inferences_to_amortise=10000.0, inferences_to_amortise_with_profile=1.21e6))
    cells = tmp_path / "cells.txt"
    cells.write_text("M 16 256 512\n")
    out_dir = tmp_path / "fig"
    assert overhead_plot.main(["--log-dir", str(logs_dir), "--out", str(out_dir),
                               "--cells", str(cells)]) == 0
    assert (out_dir / "overhead.pdf").stat().st_size > 0
    out, err = capsys.readouterr()
    assert "1e+04" in out and "1.21e+06" in out and "sdpa_cudnn" in out
    assert "missing cell overhead.h200.M.512.sparsevit: drawn as NS" in err


def test_shipped_backup_logs_plot_without_warnings(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert ablation_plot.main(["--log-dir", str(ROOT / "backup_logs" / "ablation"),
                               "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "ablation (h200)" in out and "ilp         45" in out
    assert "missing cell" not in err
    assert overhead_plot.main(["--log-dir", str(ROOT / "backup_logs" / "overhead"),
                               "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.count("overhead (h200)") == 3 and "missing cell" not in err
