"""The reorder figure's measurements (CPU only): tiles touched and fill per reordering.

One cell = (model, resolution, reorder method). Its log (sparsevit.celllog) holds one
RESULT row per tile size (``kind: tiles``: tiles, full, column, partial, tiles_frac, fill,
density, reorder_s, extract_s) and two heatmap rows (``kind: heatmap``, ``view`` full or
zoom: the attended fraction of each bin, quantised to uint8 as ceil(255 * fraction) so
that any attended bin is >= 1, zlib-compressed and base64-encoded). plot/reorder.py
draws them.

    sparsevit reorder-study --model VisionLongformer --resolution 2048 --patch 16 \\
        --methods all --tiles 32x32,64x64,128x128 --out results/reorder
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from sparsevit import blocks, celllog, masks, provenance, reorder
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph
from sparsevit.isolate import run_forked

FIGURE = "reorder"
GRAPHS = masks.MODEL_GRAPHS
TILES = ("32x32", "64x64", "128x128")
HEATMAP_BINS = 128
ZOOM_TOKENS = 1024  # the zoom view: top-left ZOOM_TOKENS x ZOOM_TOKENS corner
TIME_LIMIT_S = 120.0


def run_cell(model: str, resolution: int, patch: int, method: str,
             tiles: Sequence[str | tuple[int, int]] = TILES, out_dir: str | os.PathLike = ".",
             time_limit: float | None = TIME_LIMIT_S) -> Path:
    """Measure one cell and write its log; returns the log's path.

    A method that raises SparseVitError is logged NS (not applicable to this graph), one
    that runs past ``time_limit`` seconds TLE, one that runs out of memory OOM, and one
    that crashes or returns a non-permutation FAIL, with the reason in each row.
    """
    return _run_cell(model, resolution, patch, method, tiles, out_dir, time_limit)[0]


def _run_cell(model: str, resolution: int, patch: int, method: str,
              tiles: Sequence[str | tuple[int, int]], out_dir: str | os.PathLike,
              time_limit: float | None) -> tuple[Path, str]:
    if model not in GRAPHS:
        raise SparseVitError(f"unknown model {model!r} (choose from {', '.join(GRAPHS)})")
    method_fn = reorder.get(method)
    shapes = [blocks.parse_tile(t) for t in tiles]
    grid = masks.grid_for(resolution, patch)
    graph = GRAPHS[model](grid)
    info = provenance.collect()
    header = {
        **info, "figure": FIGURE, "model": model, "resolution": resolution, "patch": patch,
        "grid": f"{grid[0]}x{grid[1]}", "tokens": graph.n_tokens, "nnz": graph.nnz,
        "mask": json.dumps(graph.params, sort_keys=True), "method": method,
        "tiles": ",".join(f"{bm}x{bn}" for bm, bn in shapes),
        "cpu_threads": _cpu_threads(), "time_limit_s": time_limit,
    }
    status, result, reorder_s = _reorder_isolated(graph, method_fn, time_limit)
    if status == "OK":
        try:
            graph = reorder.apply(graph, result)
        except SparseVitError as e:
            status, result = "FAIL", f"not a valid permutation: {e}"
    if status == "OK":
        rows = _tile_rows(graph.adjacency, shapes, reorder_s) + _heatmap_rows(graph.adjacency)
    else:
        rows = [{"status": status, "kind": "tiles", "tile": f"{bm}x{bn}", "reason": result,
                 "reorder_s": reorder_s} for bm, bn in shapes]
        rows += [{"status": status, "kind": "heatmap", "view": view, "reason": result}
                 for view in ("full", "zoom")]
    name = celllog.cell_name(FIGURE, provenance.device_tag(info), model, resolution, method)
    return celllog.write(Path(out_dir) / name, header, rows), status


def _cpu_threads() -> int:
    """CPUs this process may use (timings depend on it); all CPUs where unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _reorder_isolated(graph: AttentionGraph, method: Callable[[AttentionGraph], np.ndarray],
                      time_limit: float | None) -> tuple[str, Any, float | None]:
    """(status, permutation or reason, seconds) of ``method(graph)``.

    The method runs in a forked child (which shares the graph's memory) so that a slow
    one can be stopped at ``time_limit`` and a crash or the OOM killer ends only the
    child, not the study.
    """
    status, value = run_forked(_reorder_child, (graph, method), time_limit)
    if status == "timeout":
        return "TLE", f"reorder ran over the {time_limit:g} s limit", None
    if status == "died":
        killed = value == -signal.SIGKILL
        return ("OOM" if killed else "FAIL", f"reorder process ended with exit code {value}"
                + (" (killed: out of memory?)" if killed else ""), None)
    return value


def _reorder_child(graph: AttentionGraph,
                   method: Callable[[AttentionGraph], np.ndarray]) -> tuple[str, Any, float | None]:
    try:
        t0 = time.perf_counter()
        perm = np.asarray(method(graph))
        return "OK", perm, time.perf_counter() - t0
    except MemoryError:
        return "OOM", "MemoryError", None
    except SparseVitError as e:
        return "NS", str(e), None
    except Exception as e:  # any crash is this method's FAIL, logged; the study goes on
        return "FAIL", f"{type(e).__name__}: {e}", None


def _tile_rows(adjacency: sp.csr_matrix, shapes: Sequence[tuple[int, int]],
               reorder_s: float) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        t0 = time.perf_counter()
        stats = blocks.extract_tiles(adjacency, shape).stats()
        rows.append({"status": "OK", "kind": "tiles", **stats, "reorder_s": reorder_s,
                     "extract_s": time.perf_counter() - t0})
    return rows


def _heatmap_rows(adjacency: sp.csr_matrix) -> list[dict[str, Any]]:
    n = adjacency.shape[0]
    rows = []
    for view, extent in (("full", n), ("zoom", min(n, ZOOM_TOKENS))):
        fraction = density_bins(adjacency, extent, HEATMAP_BINS)
        quantised = np.ceil(fraction * 255).astype(np.uint8)
        rows.append({
            "status": "OK", "kind": "heatmap", "view": view, "tokens": extent,
            "bins": quantised.shape[0], "dtype": "|u1", "shape": list(quantised.shape),
            "encoding": "zlib+base64",
            "data": base64.b64encode(zlib.compress(quantised.tobytes(), 9)).decode("ascii"),
        })
    return rows


def density_bins(adjacency: sp.csr_matrix, extent: int, bins: int) -> np.ndarray:
    """Attended fraction of each of bins x bins cells over the top-left extent x extent
    corner, counted from the CSR (no dense N x N matrix). Bins differ in size by at most
    one token when ``bins`` does not divide ``extent``."""
    bins = min(bins, extent)
    bin_of = (np.arange(extent, dtype=np.int64) * bins // extent).astype(np.int32)
    indptr = adjacency.indptr[: extent + 1]
    cols = adjacency.indices[indptr[0]: indptr[-1]]
    row_bin = np.repeat(bin_of, np.diff(indptr))
    inside = cols < extent
    flat = row_bin[inside] * bins + bin_of[cols[inside]]
    counts = np.bincount(flat, minlength=bins * bins).reshape(bins, bins)
    size = np.bincount(bin_of, minlength=bins)
    return counts / np.outer(size, size)


def register(subparsers: Any) -> None:
    """Add the ``reorder-study`` subcommand (called by sparsevit.cli)."""
    p = subparsers.add_parser(
        "reorder-study", help="reorder figure: tiles and fill per reordering (CPU)",
        description="One cell log per reorder method for one model and resolution.")
    p.add_argument("--model", required=True, choices=tuple(GRAPHS))
    p.add_argument("--resolution", required=True, type=int, help="image side in pixels")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--methods", default="all",
                   help=f"comma list of {','.join(reorder.METHODS)}, or all")
    p.add_argument("--tiles", default=",".join(TILES), help="comma list of BMxBN")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                   help="seconds one reorder may take before the cell is logged TLE")
    p.add_argument("--out", required=True, type=Path, help="directory for the cell logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the cells of one model and resolution; exit code 1 if any cell FAILed."""
    methods = list(reorder.METHODS) if args.methods == "all" else args.methods.split(",")
    for method in methods:  # bad names and sizes fail before any work
        reorder.get(method)
    tiles = [blocks.parse_tile(t) for t in args.tiles.split(",")]
    masks.grid_for(args.resolution, args.patch)
    failed = 0
    bar = tqdm(methods, desc=f"{args.model} {args.resolution}px", unit="cell", disable=None)
    for method in bar:
        path, status = _run_cell(args.model, args.resolution, args.patch, method, tiles,
                                 args.out, args.time_limit)
        failed += status == "FAIL"
        bar.write(f"{method:>8}: {status:<4} {path}")
    return 1 if failed else 0

