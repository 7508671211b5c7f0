"""bench-e2e on the CPU: argument errors, and one cell's logs (timing replaced, since
do_bench needs CUDA: these tests check what is written, never a speed)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from sparsevit import bench_e2e, provenance, timing
from sparsevit.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv,message", [
    (["--model", "ViT-H/14"], "unknown model 'ViT-H/14'"),
    (["--model", "ViL-S", "--resolution", "100"], "multiple of 32"),
    (["--model", "ViL-S", "--backends", "dense,fast"], "unknown backend(s) 'fast'"),
    (["--model", "ViL-S", "--batch", "0"], "--batch must be positive"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys) -> None:
    assert main(["bench-e2e", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def fake_bench(fn, cuda_graph=True):
    """One real call (so every backend really runs), fixed numbers: no GPU timer here."""
    assert not cuda_graph, "a model's latency includes its host time"
    fn()
    return {"median_us": 2000.0, "p20_us": 1900.0, "p80_us": 2100.0}


def test_one_cell_writes_a_log_per_backend(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(timing, "bench", fake_bench)
    args = argparse.Namespace(dtype="fp32", seed=0, compile=False, tile="64x64", pad="auto",
                              padding="gather", dense_layers="sdpa", profile=False,
                              out=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        failed = bench_e2e.run_cell(args, provenance.collect(["test"]), "ViT-B/16", 32, 2,
                                    ["dense", "native", "sparsevit"], torch.device("cpu"))
    assert not failed
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"e2e.cpu.ViT-B16.32.{b}-b2-eager.log"
                     for b in ("dense", "floor", "native", "sparsevit")]
    text = (tmp_path / "e2e.cpu.ViT-B16.32.sparsevit-b2-eager.log").read_text()
    assert "# command: test" in text and "# backend: sparsevit" in text
    row = json.loads(text.split("RESULT ", 1)[1])
    assert row["status"] == "OK" and row["reference"] == "dense"
    assert row["floor_us"] == 2000.0 and row["logits_err_over_tol"] <= 1.0


def test_logits_beyond_tolerance_fail() -> None:
    ref = torch.zeros(1, 4)
    row = bench_e2e.check_logits(ref + 0.5, ("dense", ref), "bf16")
    assert row["status"] == "FAIL" and "tolerance" in row["reason"]
    assert "status" not in bench_e2e.check_logits(ref + 0.05, ("dense", ref), "bf16")


def test_cells_and_run_single_agree() -> None:
    cells = subprocess.run(["bash", str(ROOT / "ae/e2e/cells.sh")], capture_output=True,
                           text=True, check=True).stdout.split()
    assert len(cells) == len(set(cells)) and "RegionViT-S-2048-b1-eager" in cells
    run = subprocess.run(["bash", str(ROOT / "ae/e2e/run_single.sh"), "ViT-B16-4096-b8-compile",
                          "/tmp/x"], capture_output=True, text=True,
                         env={"PYTHON": "echo", "PATH": "/usr/bin:/bin"})
    assert run.stdout.split() == ["-m", "sparsevit", "bench-e2e", "--model", "ViT-B/16",
                                  "--resolution", "4096", "--batch", "8", "--backends", "all",
                                  "--compile", "--out", "/tmp/x"]
    bad = subprocess.run(["bash", str(ROOT / "ae/e2e/run_single.sh"), "ViL-S-100-b1-eager"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a cell" in bad.stderr


def test_plot_draws_the_backup_logs(tmp_path) -> None:
    """plot.sh's script on the shipped logs (quick-plot path: no torch needed)."""
    run = subprocess.run([sys.executable, str(ROOT / "plot/e2e.py"), "--log-dir",
                          str(ROOT / "backup_logs/e2e"), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "e2e_b1_eager.pdf").is_file() and (tmp_path / "e2e_b1_eager.png").is_file()
    assert "RegionViT-S" in run.stdout and "not run" in run.stderr


def test_plot_falls_back_to_native_where_full_never_ran(tmp_path) -> None:
    """Compiled cells time no unmasked SDPA: their speedup row is over the native path,
    and says so, instead of a row of empty panels."""
    log = next((ROOT / "backup_logs/e2e").glob("e2e.*.RegionViT-S.2048.native-b1-compile.log"))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / log.name).write_text(log.read_text())
    twin = log.name.replace("native-", "sparsevit-")
    (tmp_path / "logs" / twin).write_text((log.parent / twin).read_text())
    run = subprocess.run([sys.executable, str(ROOT / "plot/e2e.py"), "--log-dir",
                          str(tmp_path / "logs"), "--out", str(tmp_path), "--mode", "compile"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "speedup over native" in run.stdout
    row = next(line.split() for line in run.stdout.splitlines()
               if line.startswith("RegionViT-S") and " 2048 " in line and "sparsevit" in line)
    native = next(line.split() for line in run.stdout.splitlines()
                  if line.startswith("RegionViT-S") and " 2048 " in line and " native " in line)
    assert float(native[-1]) == 1.0
    assert abs(float(row[-1]) - float(native[3]) / float(row[3])) < 0.01
