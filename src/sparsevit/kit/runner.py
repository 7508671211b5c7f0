"""``sparsevit run-figure`` and ``sparsevit full-run``: every cell of one or all figures
into a results directory, resumable (finished cells are skipped), locked (one run per
directory), each cell under a time limit, on the chosen executor, with one progress bar
over all workers (cells done, running, failed, ETA).

    python -m sparsevit run-figure attn --out results/2026-01-01/attn --executor multi-gpu
    python -m sparsevit full-run --out results/2026-01-01          # then plots and check
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate
from tqdm import tqdm

from sparsevit.errors import SparseVitError
from sparsevit.kit import cells as cells_mod
from sparsevit.kit.cellrun import LIVE, CellTask, Outcome
from sparsevit.kit.executors import (
    EXECUTORS,
    SlurmExecutor,
    SlurmOptions,
    local_executor,
    multi_gpu_executor,
)
from sparsevit.kit.state import DirLock, FigureDir

DEFAULT_CELL_TIMEOUT_S = 3600.0


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds (0: no limit), got {text}")
    return value


def _gpu_ids(text: str) -> str:
    """'0,1' or GPU UUIDs, as CUDA_VISIBLE_DEVICES takes them ('' names none)."""
    if not text.strip():
        return ""
    ids = [g.strip() for g in text.split(",")]
    if not ids or not all(re.fullmatch(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+", g) for g in ids):
        raise argparse.ArgumentTypeError(f"want GPU indices or UUIDs like 0,1, got {text!r}")
    return ",".join(ids)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared by run-figure and full-run."""
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: one GPU, sequential (default); multi-gpu: one worker per "
                        "visible GPU; slurm: a submitit job array")
    p.add_argument("--cell-timeout", type=_seconds, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                   help="seconds one cell may run before it is killed and logged TLE "
                        "(default %(default)g; 0: no limit)")
    p.add_argument("--gpus", type=_gpu_ids,
                   help="GPU ids to use, e.g. 0,1 or GPU UUIDs (default: CUDA_VISIBLE_DEVICES, "
                        "else every GPU nvidia-smi lists)")
    p.add_argument("--cells", help="only cells matching these comma-separated glob patterns "
                                   "(e.g. 'VisionLongformer-*'); default: all")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what is done")
    p.add_argument("--root", type=Path, help="the kit checkout (default: found from here)")
    s = p.add_argument_group("slurm executor")
    s.add_argument("--partition", help="Slurm partition")
    s.add_argument("--time", type=int, metavar="MIN",
                   help="Slurm time limit per cell job in minutes (default: cell timeout + 10)")
    s.add_argument("--gpus-per-task", type=int, default=1)
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--slurm-parallelism", type=int, metavar="N",
                   help="at most N cell jobs at once")
    s.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                   help="submitit backend; local/debug run the jobs here without Slurm (tests)")
    s.add_argument("--poll", type=float, default=5.0, help="seconds between job polls")


def register(subparsers: Any) -> None:
    """Add run-figure and full-run (called by sparsevit.cli)."""
    p = subparsers.add_parser("run-figure", help="run every cell of one figure (resumable)",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("figure", help="a directory of ae/ with cells.sh and run_single.sh")
    p.add_argument("--out", type=Path, help="results directory (default results/<today>/<fig>)")
    add_run_args(p)
    p.set_defaults(func=cmd_run_figure)

    p = subparsers.add_parser("full-run", help="every figure's cells, then plots and check",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--out", type=Path, help="results root (default results/<today>); "
                                            "each figure goes to <out>/<fig>")
    p.add_argument("--figures", help="comma list of figures (default: every ae/*/cells.sh)")
    p.add_argument("--no-plot", action="store_true", help="skip the plots and the check")
    add_run_args(p)
    p.set_defaults(func=cmd_full_run)


def _today() -> str:
    return _dt.date.today().isoformat()


def cmd_run_figure(args: argparse.Namespace) -> int:
    root = (args.root or cells_mod.find_root()).resolve()
    out = args.out or root / "results" / _today() / args.figure
    return run_figures(root, {args.figure: Path(out)}, args)


def cmd_full_run(args: argparse.Namespace) -> int:
    root = (args.root or cells_mod.find_root()).resolve()
    out_root = Path(args.out or root / "results" / _today()).resolve()
    names = cells_mod.figures(root)
    if args.figures:
        wanted = [f.strip() for f in args.figures.split(",") if f.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SparseVitError(f"--figures: {', '.join(unknown)} not in ae/ "
                                 f"(figures: {', '.join(names)})")
        names = wanted
    if not names:
        raise SparseVitError(f"no figure with cells.sh under {root / 'ae'}")
    status = run_figures(root, {f: out_root / f for f in names}, args)
    if args.no_plot or args.dry_run:
        return status
    plots_ok = plot_figures(root, {f: out_root / f for f in names})
    from sparsevit.kit import check

    print(f"\n== check: {out_root} against backup_logs/", flush=True)
    check.main(["--results", str(out_root), "--root", str(root)])
    return status or (0 if plots_ok else 1)


def plot_figures(root: Path, dirs: dict[str, Path], python: str | None = None) -> bool:
    """Each figure's plot.sh on its fresh logs; a failing plot is reported, not fatal."""
    ok = True
    for figure, out in dirs.items():
        script = root / "ae" / figure / "plot.sh"
        if not script.is_file() or not out.is_dir():
            print(f"== plot {figure}: skipped ({'no plot.sh' if out.is_dir() else 'no logs'})")
            continue
        print(f"== plot {figure} from {out}", flush=True)
        env = {**cells_mod.script_env(root), "PYTHON": python or sys.executable}
        proc = subprocess.run(["bash", str(script), str(out)], cwd=root, check=False, env=env)
        if proc.returncode != 0:
            ok = False
            print(f"plot {figure}: plot.sh exited {proc.returncode}", file=sys.stderr)
    return ok


def make_executor(args: argparse.Namespace, state_dir: Path) -> Any:
    if args.executor == "local":
        return local_executor(args.gpus)
    if args.executor == "multi-gpu":
        return multi_gpu_executor(args.gpus)
    opts = SlurmOptions(folder=state_dir / "submitit", partition=args.partition,
                        time_min=args.time, gpus_per_task=args.gpus_per_task,
                        cpus_per_task=args.cpus_per_task, parallelism=args.slurm_parallelism,
                        cluster=args.slurm_cluster, poll_s=args.poll)
    return SlurmExecutor(opts, args.cell_timeout or None)


@contextlib.contextmanager
def _locked(dirs: Sequence[FigureDir]) -> Iterator[dict[Path, int]]:
    locks = [DirLock(d) for d in dirs]
    try:
        yield {d.path: lock.acquire() for d, lock in zip(dirs, locks, strict=True)}
    finally:
        for lock in locks:
            lock.release()


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (tmux or ssh gone) stop the run like Ctrl-C: cells are ended,
    nothing half-done is marked finished."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_figures(root: Path, outs: dict[str, Path], args: argparse.Namespace) -> int:
    """Run every unfinished cell of each figure into its directory; 0 when all are done."""
    figs = [FigureDir(f, out) for f, out in outs.items()]
    timeout = args.cell_timeout if args.cell_timeout and args.cell_timeout > 0 else None
    listed = {d.figure: _select(cells_mod.list_cells(root, d.figure), args.cells) for d in figs}
    if args.dry_run:
        for t in _plan(root, figs, listed, timeout):
            print(f"to run: {t.label}")
        return 0
    executor = make_executor(args, figs[0].path.parent / ".kit" if len(figs) > 1
                             else figs[0].state)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    LIVE.stopping.clear()
    with _locked(figs) as lock_fds, _signals_interrupt():  # what is done is read under the lock
        tasks = _plan(root, figs, listed, timeout)
        print(f"{len(tasks)} cell(s) to run; {executor.describe()}; "
              f"cell limit {'none' if timeout is None else f'{timeout:g} s'}", flush=True)
        events = executor.run(tasks, lock_fds)
        total = sum(map(len, listed.values()))
        try:
            _follow(events, outcomes, total, total - len(tasks))
        except KeyboardInterrupt:
            print("\ninterrupted: ending the running cells...", file=sys.stderr, flush=True)
            outcomes += executor.cancel()
            _summary(figs, listed, outcomes, time.monotonic() - t0)
            print(f"rerun the same command to resume ({_resume_hint(outs)})", file=sys.stderr)
            return 130
    return _summary(figs, listed, outcomes, time.monotonic() - t0)


def _plan(root: Path, figs: Sequence[FigureDir], listed: dict[str, list[str]],
          timeout: float | None) -> list[CellTask]:
    """Print what each figure has done so far; return the cells still to run."""
    rows = [[d.figure, len(listed[d.figure]), sum(d.is_done(c) for c in listed[d.figure]),
             str(d.path)] for d in figs]
    print(tabulate(rows, headers=["figure", "cells", "done", "results"]), flush=True)
    return [CellTask(d.figure, c, d.path, root, timeout) for d in figs
            for c in listed[d.figure] if not d.is_done(c)]


def _select(cells: list[str], patterns: str | None) -> list[str]:
    if not patterns:
        return cells
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c, p) for p in pats)]
    if not chosen:
        raise SparseVitError(f"--cells {patterns!r} matches none of: {', '.join(cells[:8])}...")
    return chosen


def _follow(events: Iterator[tuple[str, Any, Any]], outcomes: list[Outcome], total: int,
            done_before: int) -> None:
    bar = tqdm(total=total, initial=done_before, unit="cell", desc="cells", file=sys.stderr,
               disable=None, dynamic_ncols=True, smoothing=0.1)
    running: Counter[str] = Counter()
    try:
        for kind, first, _ in events:
            if kind == "start":
                running[first.label] += 1
            else:
                outcome: Outcome = first
                running[outcome.task.label] -= 1
                outcomes.append(outcome)
                bar.update(1)
                bar.write(_line(outcome), file=sys.stderr)
            failed = sum(o.status in ("FAIL", "TLE") for o in outcomes)
            bar.set_postfix(running=sum(running.values()), failed=failed, refresh=True)
    finally:
        bar.close()


def _line(o: Outcome) -> str:
    where = " ".join(f"{k}={v}" for k, v in o.where.items() if k != "host")
    text = f"{o.status:<4} {o.task.label}  {o.elapsed_s:.1f} s  {where}".rstrip()
    return text + (f"\n     {o.reason}; log: {o.log}" if o.status in ("FAIL", "TLE") else "")


def _summary(figs: Sequence[FigureDir], listed: dict[str, list[str]],
             outcomes: Sequence[Outcome], wall_s: float) -> int:
    by_fig: dict[str, Counter[str]] = {d.figure: Counter() for d in figs}
    for o in outcomes:
        by_fig[o.task.figure][o.status] += 1
    rows, missing = [], 0
    for d in figs:
        left = sum(not d.is_done(c) for c in listed[d.figure])
        missing += left
        c = by_fig[d.figure]
        rows.append([d.figure, len(listed[d.figure]), c["OK"], c["FAIL"], c["TLE"],
                     len(listed[d.figure]) - left, left])
    print(tabulate(rows, headers=["figure", "cells", "ran OK", "FAIL", "TLE", "done",
                                  "not done"]))
    print(f"wall time {wall_s:.1f} s", flush=True)
    for o in outcomes:
        if o.status in ("FAIL", "TLE"):
            print(f"{o.status} {o.task.label}: {o.reason} -> {o.log}")
    return 1 if missing else 0


def _resume_hint(outs: dict[str, Path]) -> str:
    return ", ".join(f"{f}: --out {p}" for f, p in outs.items()) if len(outs) == 1 else \
        f"--out {next(iter(outs.values())).parent}"
