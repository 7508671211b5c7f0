"""plot/: log parsing (stray and corrupt files, every sentinel), style helpers, the
reorder figure on a crafted log directory, and plot/ staying free of torch and scipy."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

PLOT = Path(__file__).resolve().parents[1] / "plot"
sys.path.insert(0, str(PLOT))

import logs  # noqa: E402
import reorder as reorder_plot  # noqa: E402
import style  # noqa: E402

METHODS = reorder_plot.METHODS


def log_text(rows: list[dict], header: dict | None = None) -> str:
    head = {"device": "cpu", "command": "sparsevit x --a b: c", **(header or {})}
    lines = ["# sparsevit-log v1", *(f"# {k}: {v}" for k, v in head.items()), "free text"]
    return "\n".join(lines + ["RESULT " + json.dumps(r) for r in rows]) + "\n"


def heatmap_row(view: str, tokens: int, bins: int = 8) -> dict:
    data = np.triu(np.full((bins, bins), 200, np.uint8))
    return {"status": "OK", "kind": "heatmap", "view": view, "tokens": tokens, "bins": bins,
            "encoding": "zlib+base64", "dtype": "|u1", "shape": [bins, bins],
            "data": base64.b64encode(zlib.compress(data.tobytes())).decode()}


def ok_rows(tiles_frac: float = 0.1) -> list[dict]:
    rows = [{"status": "OK", "kind": "tiles", "tile": t, "tiles": 10, "full": 1, "partial": 9,
             "tiles_frac": tiles_frac, "fill": 0.5, "density": 0.05, "reorder_s": 0.01,
             "extract_s": 0.02} for t in reorder_plot.TILES]
    return [*rows, heatmap_row("full", 1025), heatmap_row("zoom", 1024)]


def sentinel_rows(status: str) -> list[dict]:
    return ([{"status": status, "kind": "tiles", "tile": t, "reason": "r"}
             for t in reorder_plot.TILES]
            + [{"status": status, "kind": "heatmap", "view": v, "reason": "r"}
               for v in ("full", "zoom")])


def test_load_dir_tolerates_stray_and_corrupt_files(tmp_path: Path) -> None:
    good = "reorder.cpu.VisionLongformer.512.{}.log"
    (tmp_path / good.format("none")).write_text(log_text(ok_rows()))
    for status in logs.SENTINELS:
        (tmp_path / good.format(status.lower())).write_text(log_text(sentinel_rows(status)))
    (tmp_path / good.format("mixed")).write_text(
        log_text(ok_rows()[:1]) + "RESULT {not json\nRESULT [1, 2]\n"
        'RESULT {"status": "WEIRD"}\n')
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "kernel.cpu.VL.log").write_text(log_text(ok_rows()))  # too few name parts
    (tmp_path / ".reorder.cpu.VisionLongformer.512.x.log.abc.tmp").write_text("")
    (tmp_path / good.format("empty")).write_text("")
    (tmp_path / good.format("noresult")).write_text("# sparsevit-log v1\n# device: cpu\n")
    (tmp_path / good.format("binary")).write_bytes(b"\xff\xfe\x00RESULT")
    (tmp_path / "other.cpu.VisionLongformer.512.none.log").write_text(log_text(ok_rows()))
    (tmp_path / "subdir.cpu.a.1.b.log").mkdir()

    logset = logs.load_dir(tmp_path, figure="reorder")

    statuses = {k.system: c.rows[0]["status"] for k, c in logset.cells.items()}
    assert statuses == {"none": "OK", "oom": "OOM", "ns": "NS", "tle": "TLE", "fail": "FAIL",
                        "mixed": "OK"}
    assert len(logset.cells[logs.Key("reorder", "cpu", "VisionLongformer", "512",
                                      "mixed")].rows) == 1
    cell = logset.cells[logs.Key("reorder", "cpu", "VisionLongformer", "512", "none")]
    assert cell.header["command"] == "sparsevit x --a b: c"  # ': ' inside a value survives
    text = "\n".join(logset.warnings)
    for stray in ("README.md", "kernel.cpu.VL.log", "subdir.cpu.a.1.b.log"):
        assert stray in text
    assert ".abc.tmp" not in text  # a killed atomic write's hidden temp file: skipped silently
    assert "empty file" in text and "no RESULT row" in text and "unreadable" in text
    assert "bad RESULT JSON" in text and "'WEIRD'" in text and "JSON list" in text
    assert "other.cpu" not in text  # another figure's log is not stray, just not read


def test_warnings_print_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.txt").write_text("x")
    logset = logs.load_dir(tmp_path)
    logset.warn("w")
    logset.warn("w")
    logset.print_warnings()
    logset.print_warnings()
    err = capsys.readouterr().err
    assert err.count("2 warning(s)") == 1 and err.count("junk.txt") == 1


def test_load_dir_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        logs.load_dir(tmp_path / "nope")


def test_expect_and_number_turn_gaps_into_ns() -> None:
    key = logs.Key("reorder", "cpu", "M", "1", "none")
    logset = logs.LogSet()
    assert logset.expect(key, kind="tiles")["status"] == "NS"
    logset.cells[key] = logs.Cell(key, Path("m.log"), {}, ok_rows())
    assert logset.expect(key, kind="tiles", tile="64x64")["tile"] == "64x64"
    assert logset.expect(key, kind="tiles", tile="16x16")["status"] == "NS"
    assert any("missing cell" in w for w in logset.warnings)
    assert any("no RESULT row with kind=tiles, tile=16x16" in w for w in logset.warnings)
    assert logs.number(ok_rows()[0], "fill") == 0.5
    assert logs.number(ok_rows()[0], "nope") == "NS"
    assert logs.number({"status": "TLE"}, "fill") == "TLE"


def test_decode_array_roundtrip_and_errors() -> None:
    row = heatmap_row("full", 10, bins=4)
    assert logs.decode_array(row).shape == (4, 4)
    for broken in ({**row, "data": "!!"}, {**row, "shape": [3, 3]}, {**row, "encoding": "x"},
                   {k: v for k, v in row.items() if k != "dtype"}):
        with pytest.raises(ValueError):
            logs.decode_array(broken)


def test_style_helpers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert style.speedup_label({"a": 3.0, "b": 2.0, "c": "OOM"}, 1.0) == \
        "best baseline / ours = 2.00x"
    assert style.speedup_label({"a": "NS"}, 1.0).endswith("n/a")
    assert style.speedup_label({"a": 2.0}, "TLE").endswith("n/a")
    fig, axes = style.new_figure(1, 1, width=3, row_height=2)
    series = {"base": [1.0, "OOM", 50.0], "ours": ["NS", "TLE", "FAIL"]}
    style.bars(axes[0, 0], ["x", "y", "z"], series, style.palette(list(series), "base"),
               ymax=10)
    texts = [t.get_text() for t in axes[0, 0].texts]
    assert {"OOM", "NS", "TLE", "FAIL", "50"} <= set(texts)  # 50 is clipped and labelled
    written = style.save(fig, tmp_path / "figs", "demo")
    assert [p.name for p in written] == ["demo.pdf", "demo.png"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["demo.pdf", "demo.png"]
    assert written[1].read_bytes()[:4] == b"\x89PNG"
    style.print_table([{"a": 1.23456789, "b": "OOM"}, {"a": "NS"}], title="T")
    out = capsys.readouterr().out
    assert "1.235" in out and "OOM" in out and "NS" in out


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A one-model, one-resolution reorder log dir: ic missing, hc OOM, a stray file."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    for method in METHODS:
        if method == "ic":
            continue
        frac = 0.2 if method == "none" else 0.05
        rows = sentinel_rows("OOM") if method == "hc" else ok_rows(frac)
        (log_dir / f"reorder.cpu.VisionLongformer.512.{method}.log").write_text(log_text(rows))
    (log_dir / "notes.txt").write_text("stray")
    cells = tmp_path / "cells.txt"
    cells.write_text("# model patch resolutions\nVisionLongformer 16 512\n")
    return log_dir, cells


def test_reorder_plot_on_crafted_logs(crafted: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    log_dir, cells = crafted
    out = tmp_path / "fig"
    assert reorder_plot.main(["--log-dir", str(log_dir), "--out", str(out),
                              "--cells", str(cells)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{e}" for n in ("reorder_heatmap", "reorder_heatmap_zoom", "reorder_fill")
        for e in ("pdf", "png"))
    captured = capsys.readouterr()
    assert "missing cell reorder.cpu.VisionLongformer.512.ic: drawn as NS" in captured.err
    assert "notes.txt" in captured.err
    table = [line.split() for line in captured.out.splitlines()]
    assert ["VisionLongformer", "512", "ic", "64x64", "NS"] in [r[:5] for r in table]
    assert ["VisionLongformer", "512", "hc", "64x64", "OOM"] in [r[:5] for r in table]


def test_reorder_plot_bad_log_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reorder_plot.main(["--log-dir", str(tmp_path / "nope"), "--out",
                              str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plot_imports_neither_torch_nor_scipy(crafted: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    """The quick-plot venv has only numpy, matplotlib and tabulate: run the whole figure
    script and check what it loaded."""
    log_dir, cells = crafted
    argv = ["--log-dir", str(log_dir), "--out", str(tmp_path / "sub"), "--cells", str(cells)]
    code = (
        f"import sys; sys.path.insert(0, {str(PLOT)!r}); import reorder\n"
        f"assert reorder.main({argv!r}) == 0\n"
        "print('BAD', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'scipy', 'sparsevit', 'tqdm')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "BAD []" in result.stdout


def test_hidden_entries_and_runner_logs(tmp_path: Path) -> None:
    """The runner's .kit state is skipped silently; its FAIL/TLE cell logs are named in
    the warnings, not reported as strays."""
    (tmp_path / ".kit" / "done").mkdir(parents=True)
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / "reorder.cpu.VL-64-rcm.cell.runner.log").write_text(
        log_text([{"status": "TLE", "reason": "over the 60 s cell limit"}]))
    (tmp_path / "reorder.cpu.VL.64.rcm.log").write_text(log_text(ok_rows()))
    logset = logs.load_dir(tmp_path)
    assert logset.warnings == []
    logset.warn_unplotted({logs.Key("reorder", "cpu", "VL", "64", "rcm")})
    assert logset.warnings == ["cell VL-64-rcm: TLE in the kit runner (over the 60 s cell limit)"]
