"""Scalability figure: one attention layer's time against its token count (log-log),
with O(N^2) and O(N) guide lines, and the table of measured growth factors against the
theoretical ones (the resolution-sweep seed's table, extended to 65k tokens).

    python plot/scalability.py --log-dir backup_logs/scalability --out figures/scalability

Cells come from ae/scalability/cells.json (written by ``sparsevit characterize cells
scalability --json``); a missing log is drawn as NS and warned about; OOM, NS, TLE and
FAIL cells are marked on the series' line at their token count, never drawn as 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import logs
import style
from characterize import cell_row, load_cells

FIGURE = "scalability"
CELLS = Path(__file__).resolve().parent.parent / "ae" / FIGURE / "cells.json"
LABELS = {"naive": "naive PyTorch", "sdpa_math": "SDPA math", "sdpa_flash": "SDPA flash (FA2)",
          "sdpa_cudnn": "SDPA cuDNN", "flex": "FlexAttention", "sparsevit": "sparsevit"}
MARKERS = {"OOM": "X", "NS": "s", "TLE": "v", "FAIL": "D"}


def series_name(settings: dict[str, Any]) -> str:
    graph = "ViT (dense)" if settings["graph"] == "ViT" else settings["graph"]
    return f"{LABELS.get(settings['method'], settings['method'])} / {graph}"


def collect(logset: logs.LogSet, cells: list[dict[str, Any]], device: str
            ) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """{series: [(cell, RESULT row)] in token order}."""
    out: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for cell in cells:
        row = cell_row(logset, FIGURE, device, cell)
        out.setdefault(series_name(cell["settings"]), []).append((cell, row))
    for points in out.values():
        points.sort(key=lambda p: p[0]["tokens"])
    return out


def growth_table(series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]
                 ) -> list[dict[str, Any]]:
    """Per measured point: tokens and time relative to the series' first measured point,
    against O(N^2) and the growth of the mask's entries (nnz: the work a sparse kernel
    must do); and the fitted exponent of time ~ N^k over the series."""
    rows = []
    for name, points in series.items():
        ok = [(c, r) for c, r in points if r["status"] == "OK"]
        for cell, row in points:
            entry: dict[str, Any] = {"series": name, "px": cell["resolution"],
                                     "tokens": cell["tokens"], "status": row["status"]}
            if row["status"] == "OK" and ok:
                c0, r0 = ok[0]
                n_ratio = cell["tokens"] / c0["tokens"]
                nnz0 = r0.get("applied", {}).get("nnz")
                nnz = row.get("applied", {}).get("nnz")
                entry.update({
                    "median us": row["median_us"], "N / N0": n_ratio,
                    "measured t / t0": row["median_us"] / r0["median_us"],
                    "O(N^2) (N/N0)^2": n_ratio**2,
                    "nnz / nnz0": nnz / nnz0 if logs.is_number(nnz) and nnz0 else None,
                })
            else:
                entry["reason"] = str(row.get("reason", ""))[:60]
            rows.append(entry)
    return rows


def exponents(series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]],
              min_us: float = 50.0) -> list[dict[str, Any]]:
    """Least-squares slope of log t against log N over each series' OK points above
    ``min_us`` (below it launch overhead, not the algorithm, sets the time)."""
    out = []
    for name, points in series.items():
        pts = [(c["tokens"], r["median_us"]) for c, r in points
               if r["status"] == "OK" and r["median_us"] >= min_us]
        k = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0] \
            if len({p[0] for p in pts}) >= 2 else None
        out.append({"series": name, "points": len(pts),
                    "tokens": f"{pts[0][0]}-{pts[-1][0]}" if pts else "-",
                    "fitted k in t ~ N^k": k})
    return out


def draw(series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]):
    fig, axes = style.new_figure(1, 1, width=7.0, row_height=4.6)
    ax = axes[0, 0]
    colours = style.palette(list(series))
    times = [r["median_us"] for pts in series.values() for _, r in pts if r["status"] == "OK"]
    tokens = [c["tokens"] for pts in series.values() for c, _ in pts]
    # Room below the data: one row of sentinel marks per series.
    lo = min(times, default=10.0) / 1.5 ** (len(series) + 2)
    hi = max(times, default=1e3) * 3
    for i, (name, points) in enumerate(series.items()):
        ok = [(c["tokens"], r["median_us"]) for c, r in points if r["status"] == "OK"]
        dense = "ViT (dense)" in name
        x, y = zip(*ok, strict=True) if ok else ((), ())
        ax.plot(x, y, marker="o" if dense else "^", ms=3, lw=1.2, ls="-" if dense else "--",
                color=colours[name], label=name if ok else f"{name} (no measured point)")
        for cell, row in points:
            if row["status"] != "OK":
                st = style.SENTINEL_STYLE[row["status"]]
                ax.scatter([cell["tokens"]], [lo * 1.5 ** (i + 1)],
                           marker=MARKERS[row["status"]], s=18,
                           color=colours[name], edgecolors=st["color"], linewidths=0.8,
                           zorder=3)
    _guides(ax, series, min(tokens, default=100), max(tokens, default=1e5),
            min(times, default=1.0))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlabel("tokens N (log)")
    ax.set_ylabel("attention time per layer (µs, log; B=1, 12 heads, d=64, bf16)")
    ax.grid(True, which="major", axis="both", alpha=0.3)
    for status, marker in MARKERS.items():
        ax.scatter([], [], marker=marker, color="white",
                   edgecolors=style.SENTINEL_STYLE[status]["color"],
                   label=f"{status} (bottom rows, in the series' colour)")
    ax.legend(loc="upper left", fontsize=5.5, ncols=2)
    return fig


def _guides(ax: Any, series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]],
            n_min: float, n_max: float, t_min: float) -> None:
    """O(N^2) through the dense flash kernel's largest point, O(N) through sparsevit's
    largest point on Vision Longformer (the guides' slopes are what matters), drawn
    down to the fastest measured time only (below it lie the sentinel rows)."""
    for slope, anchor, text in ((2, "SDPA flash (FA2) / ViT (dense)", "O(N²)"),
                                (1, "sparsevit / VisionLongformer", "O(N)")):
        ok = [(c["tokens"], r["median_us"]) for c, r in series.get(anchor, [])
              if r["status"] == "OK"]
        if not ok:
            continue
        n0, t0 = ok[-1]
        xs = np.array([max(n_min, n0 * (t_min / t0) ** (1 / slope)), n_max])
        ys = t0 * (xs / n0) ** slope
        ax.plot(xs, ys, color="#555555", lw=0.8, ls=":", zorder=1)
        ax.text(xs[-1], ys[-1], f" {text}", fontsize=6, color="#555555", va="center",
                clip_on=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", help="device tag of the logs to plot (default: most)")
    parser.add_argument("--cells", type=Path, default=CELLS)
    parser.add_argument("--figure", default=FIGURE, choices=(FIGURE,))
    args = parser.parse_args(argv)
    try:
        cells = load_cells(args.cells, FIGURE)
        logset = logs.load_dir(args.log_dir, figure=FIGURE)
    except (OSError, ValueError, KeyError) as e:
        print(f"plot/{FIGURE}.py: error: {e}", file=sys.stderr)
        return 2
    device = logs.pick_device(logset, args.device)
    series = collect(logset, cells, device)
    fig = draw(series)
    written = style.save(fig, args.out, FIGURE)
    style.print_table(exponents(series),
                      title=f"{FIGURE} ({device}): fitted growth exponent (2 = O(N^2), "
                            "1 = O(N))")
    style.print_table(growth_table(series),
                      title=f"{FIGURE} ({device}): measured growth vs theoretical, relative "
                            "to each series' first measured point")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
