"""What a results directory remembers between runs, under ``<dir>/.kit/``.

- ``done/<cell>.json``: the completion marker, written atomically once the cell's
  ``run_single.sh`` exited 0; a rerun skips exactly the cells that have one.
- ``out/<cell>.stdout|.stderr``: the cell's output streams (its last attempt).
- ``lock``: an flock held by the run writing the directory. The kernel drops it when the
  run dies, so a crash never leaves a stale lock; the cells a run starts inherit it, so a
  run killed with SIGKILL keeps the directory locked until its orphaned cells end.

A cell that crashes or runs over its time limit gets a FAIL/TLE cell log beside the
figure's own logs, ``<fig>.<device>.<cell>.cell.runner.log``, holding its stderr tail; a
later successful run of the cell removes it.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
from pathlib import Path
from typing import Any

from sparsevit import celllog
from sparsevit.atomic import write_text
from sparsevit.errors import SparseVitError

STATE = ".kit"
RUNNER_SYSTEM = "runner"
TAIL_LINES = 30


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class FigureDir:
    """The results directory of one figure."""

    def __init__(self, figure: str, path: Path) -> None:
        self.figure = figure
        self.path = Path(path).resolve()
        self.state = self.path / STATE

    def done_path(self, cell: str) -> Path:
        return self.state / "done" / f"{cell}.json"

    def is_done(self, cell: str) -> bool:
        return self.done_path(cell).is_file()

    def done_info(self, cell: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.done_path(cell).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def stream(self, cell: str, name: str) -> Path:
        return self.state / "out" / f"{cell}.{name}"

    def runner_logs(self, cell: str) -> list[Path]:
        return sorted(self.path.glob(f"{self.figure}.*.{cell}.cell.{RUNNER_SYSTEM}.log"))

    def mark_done(self, cell: str, info: dict[str, Any]) -> None:
        write_text(self.done_path(cell), json.dumps(info, indent=1, sort_keys=True) + "\n")
        for stale in self.runner_logs(cell):  # an earlier attempt's FAIL/TLE
            stale.unlink(missing_ok=True)

    def write_failure(self, cell: str, status: str, reason: str, header: dict[str, Any],
                      device: str, tail: list[str]) -> Path:
        """The FAIL/TLE cell log of a cell that could not finish; no completion marker."""
        for stale in self.runner_logs(cell):
            stale.unlink(missing_ok=True)
        name = celllog.cell_name(self.figure, device, cell, "cell", RUNNER_SYSTEM)
        # Prefixed, so no line of a cell's stderr can pass for a header or RESULT line.
        body = "stderr tail:\n" + "\n".join(f"| {line}" for line in tail)
        row = {"status": status, "reason": reason, "cell": cell,
               "stderr_tail": "\n".join(tail)[-2000:]}
        return celllog.write(self.path / name, {**header, "figure": self.figure, "cell": cell},
                             [row], body=body)


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a stream file (progress bars' \\r split too)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    parts = [p.rstrip() for p in text.replace("\r", "\n").split("\n")]
    return [p for p in parts if p.strip()][-lines:]


class DirLock:
    """An exclusive, non-blocking flock on ``<dir>/.kit/lock``; the file names its holder."""

    def __init__(self, fig: FigureDir) -> None:
        self.path = fig.state / "lock"
        self.fd: int | None = None

    def acquire(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SparseVitError(self._busy_message()) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                                 "started": now()}).encode())
        self.fd = fd
        return fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our descriptor drops the flock
            self.fd = None

    def _busy_message(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host", "?")
        who = f"pid {pid} on {host}, started {holder.get('started', '?')}"
        if host == platform.node() and isinstance(pid, int) and not _alive(pid):
            return (f"{self.path.parent.parent} is locked by the cells of a killed run ({who}) "
                    "that are still running: wait for them to end, or end them")
        return (f"{self.path.parent.parent} is in use by another run ({who}); "
                "wait or use another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
