"""``sparsevit characterize``: the characterization studies (RQ1-RQ5) and the
attention scalability ladder, declared in TOML configs (ae/characterize/configs/).

    sparsevit characterize list                      # the experiments
    sparsevit characterize cells rq1                 # their cell ids
    sparsevit characterize run rq1 --out DIR         # run (resumes; one log per cell)
    sparsevit characterize run rq5 --set batch=[1,4] --cell <id> --time-limit 300
    sparsevit characterize topology                  # NUMA nodes, numactl, nsys
    sparsevit characterize analyze trace.json|report.sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from sparsevit.characterize import config
from sparsevit.errors import SparseVitError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("characterize", help="RQ1-RQ5 studies and the scalability ladder",
                              description=__doc__.split("\n\n", 1)[0])
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))

    s = sub.add_parser("list", help="the shipped experiments")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("cells", help="print an experiment's cell ids, one per line")
    _experiment_args(s)
    s.add_argument("--json", action="store_true",
                   help="every cell's log-name parts and settings as JSON (ae/<fig>/cells.json)")
    s.set_defaults(func=cmd_cells)

    s = sub.add_parser("run", help="run an experiment's cells (finished cells are skipped)")
    _experiment_args(s)
    s.add_argument("--cell", action="append", default=[], help="run only this cell id")
    s.add_argument("--out", type=Path, help="log directory (default results/<today>/<figure>)")
    s.add_argument("--redo", action="append", default=[], choices=("OK", "OOM", "NS", "TLE",
                                                                      "FAIL"),
                   help="rerun finished cells with this status (repeatable)")
    s.add_argument("--time-limit", type=float, default=0.0,
                   help="seconds per cell: run in worker processes, log overruns TLE")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # no summary
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("topology", help="NUMA nodes, numactl and nsys on this machine")
    s.set_defaults(func=cmd_topology)

    s = sub.add_parser("analyze", help="GPU busy %%, kernel gaps and top kernels of a "
                                       "torch.profiler trace (.json) or nsys export (.sqlite)")
    s.add_argument("trace", type=Path)
    s.set_defaults(func=cmd_analyze)
    return p


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="a shipped experiment (see 'list') or a .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting in every cell; a JSON list sweeps it")


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    rows = []
    for name in config.available():
        exp = config.load(name)
        rows.append([name, exp.kind, len(exp.cells), exp.description])
    print(tabulate(rows, headers=["experiment", "kind", "cells", "description"]))
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    exp = config.load(args.experiment, args.overrides)
    if not args.json:
        for cell in exp.cells:
            print(cell.cell_id)
        return 0
    print(json.dumps(cells_document(exp), indent=1))
    return 0


def cells_document(exp: config.Experiment) -> dict:
    """What a plot needs to expect every cell without sparsevit: name parts, settings,
    and for ladder cells the token count (x axis) and the graph's nnz."""
    rows = []
    for cell in exp.cells:
        row = {"id": cell.cell_id, "model": cell.model, "resolution": cell.resolution,
               "system": cell.system, "settings": cell.settings}
        if exp.kind == "ladder":
            from sparsevit.characterize import ladder

            row["tokens"] = ladder.tokens(cell.settings)
        rows.append(row)
    return {"figure": exp.figure, "kind": exp.kind, "description": exp.description,
            "cells": rows}


def cmd_run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from sparsevit.characterize import runner

    if args.time_limit < 0:
        raise SparseVitError("--time-limit must be >= 0")
    exp = config.load(args.experiment, args.overrides)
    cells = exp.select(args.cell)
    out = args.out or Path("results") / dt.date.today().isoformat() / exp.figure
    ctx = runner.make_context(exp, out, args.overrides)
    redo = tuple(args.redo)
    if args.time_limit > 0:
        runner.supervise(ctx, cells, args.time_limit, redo)
    else:
        runner.run_cells(ctx, cells, redo, progress=not args.no_progress)
    if args.worker:  # the supervisor prints the summary
        return 0
    table = []
    for cell in cells:
        _, rows = runner.read_log(runner.log_path(ctx, cell))
        row = rows[0] if rows else {"status": "-", "reason": "no log"}
        table.append([cell.cell_id, row["status"], _headline(row),
                      str(row.get("reason", ""))[:70]])
    print(tabulate(table, headers=["cell", "status", "result", "reason"]))
    print(f"logs in {out}")
    return 0


def _headline(row: dict) -> str:
    if "throughput_img_s" in row:
        return (f"{row['throughput_img_s']:.1f} img/s, p50 {row['latency_p50_ms']:.2f} ms, "
                f"p99 {row['latency_p99_ms']:.2f} ms")
    if "median_us" in row:
        return f"{row['median_us']:.1f} us"
    return ""


def cmd_topology(args: argparse.Namespace) -> int:
    from sparsevit.characterize import numa, profiling

    topo = numa.topology(pci_bus_id=numa.gpu_pci_bus_id())
    print(json.dumps({**topo.as_header(), "cpus_per_node": topo.cpus,
                      "nsys": profiling.nsys_path() or "absent",
                      "local/remote binding": numa.unsupported("local", topo) or "supported"},
                     indent=1))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from sparsevit.characterize import profiling

    if not args.trace.is_file():
        raise SparseVitError(f"{args.trace}: no such file")
    if args.trace.suffix == ".sqlite":
        kernels = profiling.kernels_from_nsys_sqlite(args.trace)
    else:
        try:
            kernels = profiling.kernels_from_chrome_trace(json.loads(args.trace.read_text()))
        except json.JSONDecodeError as e:
            raise SparseVitError(f"{args.trace}: not a chrome trace JSON ({e.msg})") from None
    result = profiling.analyze(kernels)
    top = result.pop("top_kernels", [])
    print(tabulate([result], headers="keys", floatfmt=".4g"))
    print(tabulate(top, headers="keys", floatfmt=".4g"))
    return 0
