"""The kit's runner (sparsevit run-figure / full-run) on a fake figure of shell cells:
resume, lock, FAIL and TLE cells, kill and resume, local, multi-GPU (fake GPU ids) and
submitit executors; and the real figures' cells.sh / run_single.sh."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit_fake import SRC, calls, make_root, run, runner_cmd
from sparsevit.kit import cells as cells_mod
from sparsevit.kit.state import DirLock, FigureDir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plot"))
import logs as plot_logs  # noqa: E402


def assert_group_ends(pgid: int, timeout: float = 15) -> None:
    """The process group ``pgid`` is gone within ``timeout`` s (reaping takes a moment)."""
    t0 = time.monotonic()
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() - t0 < timeout, f"process group {pgid} outlived its cell"
        time.sleep(0.05)


def done(out: Path) -> set[str]:
    return {p.stem for p in (out / ".kit" / "done").glob("*.json")}


def test_local_runs_every_cell_then_skips_finished_ones(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1", "ok-2", "ok-3"])
    out = tmp_path / "res"
    proc = run(root, out)
    assert proc.returncode == 0, proc.stderr
    assert done(out) == {"ok-1", "ok-2", "ok-3"}
    assert sorted(p.name for p in out.glob("*.log")) == [
        f"fake.cpu.ok-{i}.1.sys.log" for i in (1, 2, 3)]
    marker = json.loads((out / ".kit/done/ok-2.json").read_text())
    assert marker["executor"] == "local" and marker["exit_code"] == 0 and marker["host"]
    again = run(root, out)
    assert again.returncode == 0
    assert len(calls(root)) == 3  # nothing ran twice
    assert "0 cell(s) to run" in again.stdout


def test_failed_cell_gets_fail_log_with_stderr_tail_and_is_retried(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1", "fail-1"])
    out = tmp_path / "res"
    proc = run(root, out)
    assert proc.returncode == 1
    assert done(out) == {"ok-1"}
    logset = plot_logs.load_dir(out, figure="fake")
    failed = [c for k, c in logset.cells.items() if k.system == "runner"]
    assert len(failed) == 1 and failed[0].key.model == "fail-1"
    row, = failed[0].rows  # the RESULT line the cell printed on stderr is not a row
    assert row["status"] == "FAIL" and "exit code 3" in row["reason"]
    assert "boom: cell fail-1 broke" in row["stderr_tail"]
    assert failed[0].header["executor"] == "local"
    assert "FAIL fake/fail-1" in proc.stdout

    fixed = run(root, out, env={"FAKE_FIX": "1"})
    assert fixed.returncode == 0
    assert done(out) == {"ok-1", "fail-1"}
    assert not list(out.glob("*.runner.log"))  # the stale FAIL log is gone
    assert [c[0] for c in calls(root)].count("ok-1") == 1


def test_cell_over_its_time_limit_is_killed_and_logged_tle(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["slow-1", "ok-1"])
    out = tmp_path / "res"
    t0 = time.monotonic()
    proc = run(root, out, "--cell-timeout", "1", env={"FAKE_SLEEP": "60"})
    assert time.monotonic() - t0 < 30  # the run never waits on the stuck cell
    assert proc.returncode == 1
    assert done(out) == {"ok-1"}
    log, = out.glob("fake.*.slow-1.cell.runner.log")
    row, = plot_logs.parse_text(log.read_text())[1]
    assert row["status"] == "TLE" and "1 s limit" in row["reason"]
    assert_group_ends(int(calls(root)[0][3]))  # the cell's whole process group is gone


def test_multi_gpu_pins_one_cell_per_fake_gpu(tmp_path: Path) -> None:
    cells = [f"busy-{i}" for i in range(6)]
    root = make_root(tmp_path / "repo", cells)
    out = tmp_path / "res"
    t0 = time.monotonic()
    proc = run(root, out, "--executor", "multi-gpu", "--gpus", "3,7")
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert done(out) == set(cells)
    starts = {c[0]: (c[1], c[2], float(c[4])) for c in calls(root, "start")}
    ends = {c[0]: float(c[4]) for c in calls(root, "end")}
    assert {g for g, _, _ in starts.values()} == {"3", "7"}
    assert {e for _, e, _ in starts.values()} == {"multi-gpu"}
    for gpu in ("3", "7"):  # never two cells on one GPU at once
        spans = sorted((starts[c][2], ends[c]) for c in cells if starts[c][0] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    # Each log records where it ran (the log's own header and the marker).
    logset = plot_logs.load_dir(out, figure="fake")
    assert {c.header["cuda_visible_devices"] for c in logset.cells.values()} == {"3", "7"}
    marker = json.loads((out / ".kit/done/busy-0.json").read_text())
    assert marker["executor"] == "multi-gpu" and marker["cuda_visible_devices"] in ("3", "7")
    assert wall < 6 * 0.3 + 15


def test_multi_gpu_without_gpus_is_a_clear_error(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1"])
    proc = run(root, tmp_path / "res", "--executor", "multi-gpu", "--gpus", "")
    assert proc.returncode == 2
    assert "no GPU found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_lock_refuses_a_second_run_and_a_dead_holder_is_no_lock(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1"])
    out = tmp_path / "res"
    lock = DirLock(FigureDir("fake", out))
    lock.acquire()
    try:
        proc = run(root, out)
        assert proc.returncode == 2
        assert "in use by another run" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        assert not calls(root)
    finally:
        lock.release()
    # The lock file stays behind naming its (now gone) holder; that is not a lock.
    assert (out / ".kit" / "lock").exists()
    assert run(root, out).returncode == 0


def _wait_for(path: Path, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def _start(root: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(runner_cmd(root, out), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(SRC), **env})


def test_killed_mid_cell_leaves_no_half_cell_and_rerun_completes(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1", "slow-1", "ok-2"])
    out = tmp_path / "res"
    runner = _start(root, out, {"FAKE_SLEEP": "60"})
    _wait_for(root / "started-slow-1")
    runner.send_signal(signal.SIGTERM)  # tmux killed, or the job's allocation ended
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert "rerun the same command to resume" in err
    assert done(out) == {"ok-1"}
    assert not list(out.glob("*slow-1*"))  # no log, no FAIL log: it simply did not finish
    assert_group_ends(int(calls(root)[1][3]))

    proc = run(root, out, env={"FAKE_SLEEP": "0"})
    assert proc.returncode == 0, proc.stderr
    assert done(out) == {"ok-1", "slow-1", "ok-2"}
    assert [c[0] for c in calls(root)] == ["ok-1", "slow-1", "slow-1", "ok-2"]


def test_sigkilled_run_keeps_dir_locked_until_its_orphaned_cell_ends(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["slow-1"])
    out = tmp_path / "res"
    runner = _start(root, out, {"FAKE_SLEEP": "120"})
    _wait_for(root / "started-slow-1")
    runner.kill()  # no handler runs: the cell is orphaned, still holding the lock
    runner.communicate(timeout=30)
    busy = run(root, out)
    assert busy.returncode == 2 and "cells of a killed run" in busy.stderr
    pgid = int(calls(root)[0][3])
    os.killpg(pgid, signal.SIGKILL)  # what the message asks the user to do
    assert_group_ends(pgid)
    proc = run(root, out, env={"FAKE_SLEEP": "0"})
    assert proc.returncode == 0, proc.stderr
    assert done(out) == {"slow-1"}  # no marker came from the killed run: rerun redid it


def test_submitit_local_executor_runs_cells_as_jobs(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    root = make_root(tmp_path / "repo", ["ok-1", "fail-1", "ok-2"])
    out = tmp_path / "res"
    proc = run(root, out, "--executor", "slurm", "--slurm-cluster", "local", "--poll", "0.2",
               "--cell-timeout", "60")
    assert proc.returncode == 1, proc.stderr
    assert done(out) == {"ok-1", "ok-2"}
    assert json.loads((out / ".kit/done/ok-1.json").read_text())["executor"] == "slurm"
    log, = out.glob("fake.*.fail-1.cell.runner.log")
    assert "boom" in log.read_text()
    assert list((out / ".kit" / "submitit").glob("*/*_result.pkl"))
    again = run(root, out, "--executor", "slurm", "--slurm-cluster", "local", "--poll", "0.2",
                env={"FAKE_FIX": "1"})
    assert again.returncode == 0
    assert [c[0] for c in calls(root)].count("ok-1") == 1  # only the missing cell resubmitted


def test_slurm_executor_without_slurm_is_a_clear_error(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1"])
    proc = run(root, tmp_path / "res", "--executor", "slurm", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "no sbatch on PATH" in proc.stderr


@pytest.mark.parametrize("listing, message", [
    ("a.b\n", "outside [A-Za-z0-9_+-]"), ("x\nx\n", "more than once"), ("", "no cell")])
def test_bad_cell_listings_are_refused(tmp_path: Path, listing: str, message: str) -> None:
    root = make_root(tmp_path / "repo", ["ok-1"])
    (root / "ae/fake/cells.txt").write_text(listing)
    proc = run(root, tmp_path / "res")
    assert proc.returncode == 2 and message in proc.stderr


def test_cells_filter_and_dry_run(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1", "ok-2", "busy-1"])
    out = tmp_path / "res"
    proc = run(root, out, "--cells", "ok-*", "--dry-run")
    assert proc.returncode == 0 and "to run: fake/ok-2" in proc.stdout
    assert "busy-1" not in proc.stdout and not calls(root)
    assert run(root, out, "--cells", "nope-*").returncode == 2


def test_full_run_covers_every_figure_into_dated_dirs(tmp_path: Path) -> None:
    root = make_root(tmp_path / "repo", ["ok-1"])
    other = root / "ae" / "other"
    other.mkdir()
    for name in ("cells.sh", "run_single.sh"):
        (other / name).write_text((root / "ae/fake" / name).read_text())
    (other / "cells.txt").write_text("ok-9\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "sparsevit", "full-run", "--root", str(root),
                           "--out", str(tmp_path / "res"), "--no-plot"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert done(tmp_path / "res" / "fake") == {"ok-1"}
    assert done(tmp_path / "res" / "other") == {"ok-9"}


def test_every_real_figure_lists_valid_cells() -> None:
    figures = cells_mod.figures(REPO)
    assert {"attn", "reorder"} <= set(figures)
    for figure in figures:
        assert cells_mod.list_cells(REPO, figure)  # valid, unique, non-empty
    assert cells_mod.list_cells(REPO, "attn") == [
        "VisionLongformer-1024", "VisionLongformer-2048", "RegionViT-2016", "DynamicViT-2048"]
    reorder = cells_mod.list_cells(REPO, "reorder")
    assert len(reorder) == 72 and "RegionViT-1792-grouped" in reorder


@pytest.mark.parametrize("figure, cell", [("attn", "VisionLongformer-999"),
                                          ("attn", "nodash"), ("reorder", "RegionViT-448"),
                                          ("reorder", "RegionViT-448-hc-x")])
def test_real_run_single_refuses_unknown_cells(tmp_path: Path, figure: str, cell: str) -> None:
    proc = subprocess.run(["bash", str(REPO / "ae" / figure / "run_single.sh"), cell,
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "not a cell of this figure" in proc.stderr


def test_reorder_figure_cell_through_the_runner(tmp_path: Path) -> None:
    out = tmp_path / "reorder"
    proc = subprocess.run(["bash", str(REPO / "ae/reorder/run.sh"), str(out), "--cells",
                           "VisionLongformer-512-hilbert"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    cell, = plot_logs.load_dir(out, figure="reorder").cells.values()
    assert cell.path.name.endswith(".VisionLongformer.512.hilbert.log")
    header = cell.header
    assert header["executor"] == "local" and header["worker"] == "0"
    assert done(out) == {"VisionLongformer-512-hilbert"}
