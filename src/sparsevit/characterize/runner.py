"""Run an experiment's cells: one log per cell, resumable, optionally time-limited.

A cell whose log exists with a RESULT row and the same settings is finished and skipped
(``redo`` names statuses to run again, e.g. FAIL,TLE). Before a cell starts, its id is
written to ``<out>/.inflight``; with a time limit the run happens in a worker process
that the supervisor kills when a cell overruns, logging that cell TLE and starting a
new worker for the rest. NUMA-bound cells run in a child started through numactl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsevit import celllog, provenance
from sparsevit.characterize import numa, profiling
from sparsevit.characterize.config import Cell, Experiment
from sparsevit.errors import SparseVitError

INFLIGHT = ".inflight"
# Set in a cell's child process (numactl / nsys): the command prefix it was started with.
CHILD_ENV = "SPARSEVIT_CELL_PREFIX"


@dataclass
class RunContext:
    """What every cell of one run shares."""

    experiment: Experiment
    out: Path
    overrides: list[str] = field(default_factory=list)
    device_tag: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    topology: numa.Topology | None = None
    model_factory: Callable[[dict[str, Any]], Any] | None = None  # tests inject a model


def log_path(ctx: RunContext, cell: Cell) -> Path:
    return ctx.out / celllog.cell_name(cell.figure, ctx.device_tag, cell.model,
                                       cell.resolution, cell.system)


def read_log(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(settings recorded in a log, its RESULT rows); (None, []) when unreadable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None, []
    settings, rows = None, []
    for line in text.splitlines():
        if line.startswith("# settings: "):
            try:
                settings = json.loads(line.removeprefix("# settings: "))
            except json.JSONDecodeError:
                settings = None
        elif line.startswith("RESULT "):
            try:
                rows.append(json.loads(line.removeprefix("RESULT ")))
            except json.JSONDecodeError:
                continue
    return settings, rows


def finished(path: Path, cell: Cell, redo: tuple[str, ...] = ()) -> bool:
    settings, rows = read_log(path)
    return settings == cell.settings and bool(rows) and rows[0].get("status") not in redo


def header(ctx: RunContext, cell: Cell) -> dict[str, Any]:
    return {**ctx.info, "figure": cell.figure, "cell": cell.cell_id,
            "experiment": str(ctx.experiment.source), "overrides": json.dumps(ctx.overrides),
            **({} if ctx.topology is None else ctx.topology.as_header()),
            "settings": json.dumps(cell.settings, sort_keys=True),
            **{f"set.{k}": v for k, v in cell.settings.items()}}


def write_log(ctx: RunContext, cell: Cell, row: dict[str, Any]) -> Path:
    return celllog.write(log_path(ctx, cell), header(ctx, cell), [row])


def make_context(experiment: Experiment, out: Path, overrides: list[str],
                 model_factory: Callable[[dict[str, Any]], Any] | None = None) -> RunContext:
    info = provenance.collect()
    bus = numa.gpu_pci_bus_id() if experiment.kind == "model" else None
    return RunContext(experiment, out, list(overrides), provenance.device_tag(info), info,
                      numa.topology(pci_bus_id=bus), model_factory)


def run_cells(ctx: RunContext, cells: list[Cell], redo: tuple[str, ...] = (),
              progress: bool = True) -> dict[str, str]:
    """Run every unfinished cell in this process; {cell id: status} of those run."""
    from tqdm import tqdm

    ctx.out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not finished(log_path(ctx, c), c, redo)]
    statuses: dict[str, str] = {}
    bar = tqdm(todo, desc=ctx.experiment.figure, unit="cell", file=sys.stderr,
               disable=not progress or None)
    for cell in bar:
        bar.set_postfix_str(cell.cell_id)
        (ctx.out / INFLIGHT).write_text(f"{cell.cell_id}\n{time.time()}\n")
        row = run_one(ctx, cell)
        statuses[cell.cell_id] = row["status"]
        write_log(ctx, cell, row)
    (ctx.out / INFLIGHT).unlink(missing_ok=True)
    return statuses


def run_one(ctx: RunContext, cell: Cell) -> dict[str, Any]:
    """One cell's RESULT row; a failure becomes its status (NS, OOM, FAIL), never raises."""
    import torch

    from sparsevit.baselines import classify

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    t0 = time.perf_counter()
    try:
        if cell.kind == "ladder":
            from sparsevit.characterize.ladder import run_ladder_cell

            if device.type != "cuda":
                return {"status": "NS", "reason": "the ladder times CUDA kernels; no GPU here"}
            row = run_ladder_cell(cell.settings, device)
        else:
            row = _run_model(ctx, cell, device)
    except Exception as e:  # every failure is one cell's status; the sweep goes on
        status, reason = classify(e)
        row = {"status": status, "reason": reason}
    finally:
        _release(device)
    row["cell_s"] = round(time.perf_counter() - t0, 3)
    return row


def _run_model(ctx: RunContext, cell: Cell, device: Any) -> dict[str, Any]:
    """A model cell, in this process or, for a NUMA binding or an nsys trace, in a child
    started through numactl / nsys (which then writes the log this reads back)."""
    from sparsevit.characterize.bench import run_model_cell

    binding = cell.settings["numa"]
    in_child = CHILD_ENV in os.environ
    if not in_child:
        prefix: list[str] = []
        if binding != "none":
            topo = ctx.topology or numa.topology()
            reason = numa.unsupported(binding, topo)
            if reason:
                return {"status": "NS", "reason": f"NUMA binding '{binding}': {reason}"}
            prefix += numa.numactl_prefix(binding, topo)
        report = None
        if cell.settings["nsys"] and profiling.nsys_path():
            report = ctx.out / "nsys" / cell.cell_id
            report.parent.mkdir(parents=True, exist_ok=True)
            prefix = [*profiling.nsys_command(report), *prefix]
        if prefix:
            row = _run_child(ctx, cell, prefix)
            if report is not None and row["status"] == "OK":
                row["nsys"] = profiling.analyze(
                    profiling.kernels_from_nsys_sqlite(f"{report}.sqlite"))
            return row
    row = run_model_cell(cell.settings, device, ctx.model_factory)
    row["applied"].update(numa=binding, **numa.applied_binding())
    if in_child:
        row["applied"]["launched_with"] = os.environ[CHILD_ENV]
    if cell.settings["nsys"] and not in_child:
        row["nsys"] = {"status": "NS", "reason": "nsys is not on the PATH"}
    return row


def worker_command(ctx: RunContext, cell_ids: list[str] | None = None) -> list[str]:
    """The command that runs (a subset of) this experiment in a fresh process."""
    cmd = [sys.executable, "-m", "sparsevit", "characterize", "run",
           str(ctx.experiment.source), "--out", str(ctx.out), "--no-progress", "--worker"]
    for item in ctx.overrides:
        cmd += ["--set", item]
    for cell_id in cell_ids or []:
        cmd += ["--cell", cell_id]
    return cmd


def _run_child(ctx: RunContext, cell: Cell, prefix: list[str]) -> dict[str, Any]:
    env = {**os.environ, CHILD_ENV: " ".join(prefix)}
    done = subprocess.run([*prefix, *worker_command(ctx, [cell.cell_id])], env=env,
                          check=False)
    settings, rows = read_log(log_path(ctx, cell))
    if done.returncode != 0 or not rows or settings != cell.settings:
        return {"status": "FAIL", "reason": f"child ({' '.join(prefix[:1])}) exited "
                                            f"{done.returncode} without a log"}
    return rows[0]


def _release(device: Any) -> None:
    """Drop compiled graphs and cached memory so the next cell starts clean."""
    import torch

    try:
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    except Exception:  # a dead CUDA context: the supervisor's next worker starts fresh
        pass


def supervise(ctx: RunContext, cells: list[Cell], time_limit_s: float,
              redo: tuple[str, ...] = ()) -> int:
    """Run ``cells`` in worker processes, killing a worker whose cell overruns
    ``time_limit_s`` (logged TLE) or crashes the process (logged FAIL), then going on
    with a new worker. Returns the number of cells logged that way."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    marker = ctx.out / INFLIGHT
    given_up: set[str] = set()
    # SIGTERM (timeout, a scheduler) must end the worker too, not orphan it on the GPU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    while True:
        todo = [c.cell_id for c in cells
                if c.cell_id not in given_up and not finished(log_path(ctx, c), c, redo)]
        if not todo:
            return len(given_up)
        marker.unlink(missing_ok=True)
        worker = subprocess.Popen([*worker_command(ctx, todo),
                                   *[a for s in redo for a in ("--redo", s)]])
        row: dict[str, Any] | None = None
        culprit = None
        try:
            while worker.poll() is None:
                time.sleep(0.5)
                culprit = _overrun(marker, time_limit_s)
                if culprit is not None:
                    row = {"status": "TLE",
                           "reason": f"no result within the {time_limit_s:g} s per-cell limit"}
                    break
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        if culprit is None and worker.returncode:
            culprit = _overrun(marker, 0.0)  # the cell the worker died in, if any
        if culprit is None:
            if worker.returncode:
                raise SparseVitError(f"worker exited {worker.returncode} between cells")
            return len(given_up)  # the worker tried every cell it was given
        cell = next(c for c in cells if c.cell_id == culprit)
        write_log(ctx, cell, row or {"status": "FAIL",
                                     "reason": f"the worker process died (exit "
                                               f"{worker.returncode}) in this cell"})
        given_up.add(culprit)


def _overrun(marker: Path, limit: float) -> str | None:
    try:
        cell_id, started = marker.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return cell_id if time.time() - float(started) > limit else None
