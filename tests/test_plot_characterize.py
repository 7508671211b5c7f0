"""plot/characterize.py and plot/scalability.py: shipped backup logs plot; a crafted log
directory (missing cells, a sentinel, a kit-runner failure log, a stray file) draws
marks and warns instead of plotting 0; cells.json stays what the configs expand to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sparsevit.characterize import cli as characterize_cli
from sparsevit.characterize import config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plot"))

import characterize as characterize_plot  # noqa: E402
import scalability as scalability_plot  # noqa: E402

FIGURES = ("rq1", "rq2", "rq3", "rq4", "rq5", "scalability")


@pytest.mark.parametrize("figure", FIGURES)
def test_cells_json_matches_the_config(figure: str) -> None:
    shipped = json.loads((ROOT / "ae" / figure / "cells.json").read_text())
    assert shipped == json.loads(json.dumps(
        characterize_cli.cells_document(config.load(figure)))), \
        f"regenerate: sparsevit characterize cells {figure} --json > ae/{figure}/cells.json"


def main_for(figure: str):
    if figure == "scalability":
        return scalability_plot.main
    return lambda argv: characterize_plot.main(["--figure", figure, *argv])


@pytest.mark.parametrize("figure", FIGURES)
def test_backup_logs_plot(figure: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    logs = ROOT / "backup_logs" / figure
    if not logs.is_dir():
        pytest.skip(f"no backup logs for {figure} yet")
    assert main_for(figure)(["--log-dir", str(logs), "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{figure}.pdf").stat().st_size > 0
    assert (tmp_path / f"{figure}.png").stat().st_size > 0
    assert "every plotted number" in capsys.readouterr().out or figure == "scalability"


def log_text(figure: str, row: dict) -> str:
    return f"# sparsevit-log v1\n# figure: {figure}\nRESULT {json.dumps(row)}\n"


def test_rq4_marks_ns_with_reason_and_warns(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    ok = {"status": "OK", "throughput_img_s": 1234.5, "latency_p50_ms": 2.5,
          "applied": {"mems_allowed": "0"}}
    (logs / "rq4.h200.vit32x6x384.224.b1_numanone.log").write_text(log_text("rq4", ok))
    ns = {"status": "NS", "reason": "NUMA binding 'local': one node"}
    (logs / "rq4.h200.vit32x6x384.224.b1_numalocal.log").write_text(log_text("rq4", ns))
    # The kit runner's log of a cell that timed out stands in for the cell's own.
    tle = {"status": "TLE", "reason": "over 600 s"}
    (logs / "rq4.h200.vit32x6x384-224-b8_numanone.cell.runner.log").write_text(
        log_text("rq4", tle))
    (logs / "notes.txt").write_text("stray")
    assert characterize_plot.main(["--figure", "rq4", "--log-dir", str(logs),
                                   "--out", str(tmp_path / "fig")]) == 0
    out, err = capsys.readouterr()
    line = next(s for s in out.splitlines() if s.startswith("vit32x6x384-224-b1_numanone "))
    assert "1234" in line and "2.5" in line
    assert "NS: NUMA binding 'local': one node (1 cell)" in out
    assert "TLE: over 600 s (1 cell)" in out
    assert "missing cell rq4.h200.vit32x6x384.224.b1_numaremote: drawn as NS" in err
    assert "notes.txt: not a" in err


def test_scalability_growth_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for res, tokens, us in ((224, 197, 100.0), (448, 785, 1600.0)):
        row = {"status": "OK", "median_us": us, "applied": {"nnz": tokens * tokens}}
        (logs / f"scalability.h200.ViT_p16.{res}.sdpa_flash.log").write_text(
            log_text("scalability", row))
    cells = {"figure": "scalability", "cells": [
        {"id": f"ViT_p16-{r}-sdpa_flash", "model": "ViT_p16", "resolution": str(r),
         "system": "sdpa_flash", "tokens": n,
         "settings": {"graph": "ViT", "method": "sdpa_flash"}}
        for r, n in ((224, 197), (448, 785), (896, 3137))]}
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    assert scalability_plot.main(["--log-dir", str(logs), "--out", str(tmp_path / "fig"),
                                  "--cells", str(tmp_path / "cells.json")]) == 0
    out, err = capsys.readouterr()
    # (785/197)^2 = 15.88 theoretical against 16x measured; slope log(16)/log(3.985) = 2.006
    row = next(s for s in out.splitlines() if s.startswith("SDPA flash (FA2) / ViT (dense)  448"))
    assert "3.985" in row and "16" in row and "15.88" in row
    assert "2.006" in out
    assert "missing cell scalability.h200.ViT_p16.896.sdpa_flash: drawn as NS" in err


def test_missing_log_dir_is_one_line_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert characterize_plot.main(["--figure", "rq1", "--log-dir", str(tmp_path / "no"),
                                   "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
