"""Run one cell: ``ae/<fig>/run_single.sh <cell> <dir>`` under a time limit.

Exit 0 -> the completion marker. A non-zero exit -> a FAIL cell log, over the limit -> the
cell's process group is killed and a TLE cell log written; both carry the stderr tail and
leave no marker, so the next run retries the cell. Used in-process by the local workers
and, pickled, inside each Slurm job.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsevit import provenance
from sparsevit.kit.cells import script_env
from sparsevit.kit.state import FigureDir, now, tail

KILL_GRACE_S = 10.0
# Environment variables that say where a cell ran; sparsevit.provenance logs them.
EXECUTOR_ENV, WORKER_ENV = provenance.PLACEMENT_ENV["executor"], provenance.PLACEMENT_ENV["worker"]


@dataclass(frozen=True)
class CellTask:
    figure: str
    cell: str
    out: Path  # the figure's results directory (absolute)
    root: Path  # the kit checkout holding ae/
    timeout_s: float | None

    @property
    def label(self) -> str:
        return f"{self.figure}/{self.cell}"


@dataclass
class Outcome:
    task: CellTask
    status: str  # OK (marker written), FAIL, TLE, or STOPPED (interrupted, nothing written)
    elapsed_s: float
    where: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    log: Path | None = None


class Live:
    """The cell processes running in this process, so an interrupt can end them all."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            kill_group(proc)


LIVE = Live()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the cell's process group; after the cell's shell ends (or a grace period),
    SIGKILL whatever of the group is left, so nothing of the cell outlives it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(KILL_GRACE_S)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def placement(executor: str, worker: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {EXECUTOR_ENV: executor, WORKER_ENV: worker, **(extra or {})}


def where(place: dict[str, str]) -> dict[str, str]:
    """Where a cell runs, as logged in its marker and failure log."""
    env = {**os.environ, **place}
    return {"host": platform.node(),
            **{k: env[v] for k, v in provenance.PLACEMENT_ENV.items() if v in env}}


def run_cell(task: CellTask, place: dict[str, str], lock_fd: int | None = None) -> Outcome:
    """Run ``task`` with the placement environment ``place``; never raises for the cell's
    own failure (that becomes a FAIL/TLE log)."""
    fig = FigureDir(task.figure, task.out)
    script = task.root / "ae" / task.figure / "run_single.sh"
    stdout, stderr = fig.stream(task.cell, "stdout"), fig.stream(task.cell, "stderr")
    stdout.parent.mkdir(parents=True, exist_ok=True)
    started, t0 = now(), time.monotonic()
    info = where(place)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        if LIVE.stopping.is_set():
            return Outcome(task, "STOPPED", 0.0, info)
        # Own process group: a time limit or an interrupt ends the whole cell, grandchildren
        # included. The lock's descriptor goes along (see state.py).
        proc = subprocess.Popen(["bash", str(script), task.cell, str(task.out)], cwd=task.root,
                                env=script_env(task.root, place), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True,
                                pass_fds=() if lock_fd is None else (lock_fd,))
        LIVE.add(proc)
        try:
            rc: int | None = proc.wait(task.timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
        finally:
            LIVE.discard(proc)
    elapsed = time.monotonic() - t0
    if LIVE.stopping.is_set() and rc != 0:
        return Outcome(task, "STOPPED", elapsed, info)
    record = {"figure": task.figure, "cell": task.cell, "started": started, "ended": now(),
              "elapsed_s": round(elapsed, 3), "exit_code": rc, **info}
    if rc == 0:
        fig.mark_done(task.cell, {**record, "status": "OK"})
        return Outcome(task, "OK", elapsed, info)
    if rc is None:
        status, reason = "TLE", f"cell ran over its {task.timeout_s:g} s limit and was killed"
    else:
        status, reason = "FAIL", f"run_single.sh exited with {_exit_text(rc)}"
    log = record_failure(task, status, reason, record, tail(stderr))
    return Outcome(task, status, elapsed, info, reason, log)


def record_failure(task: CellTask, status: str, reason: str, record: dict[str, Any],
                   lines: list[str]) -> Path:
    """Write the FAIL/TLE cell log of ``task`` with provenance and the stderr tail."""
    info = provenance.collect(["bash", f"ae/{task.figure}/run_single.sh", task.cell,
                               str(task.out)])
    header = {**info, **{k: v for k, v in record.items() if v is not None},
              "stderr": FigureDir(task.figure, task.out).stream(task.cell, "stderr")}
    return FigureDir(task.figure, task.out).write_failure(
        task.cell, status, reason, header, provenance.device_tag(info), lines)


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def run_slurm_job(task: CellTask) -> Outcome:
    """The function each Slurm array task runs (pickled by submitit): Slurm has already
    pinned the job's GPU(s) with CUDA_VISIBLE_DEVICES."""
    worker = os.environ.get("SLURM_ARRAY_TASK_ID", os.environ.get("SLURM_JOB_ID", "0"))
    return run_cell(task, placement("slurm", worker))
