"""e2e figure: whole-model latency and speedup against resolution, per model and backend.

    python plot/e2e.py --log-dir backup_logs/e2e --out figures/e2e [--batch 1 --mode eager]

Top row: median forward time per backend (log-log) with the no-attention floor dashed;
bottom row: speedup over dense SDPA without a mask (``full``: the same model with full
attention), or over the native structured path in a figure where ``full`` never ran (the
compiled cells). One column per model of ae/e2e/cells.sh. A cell that did not run or could
not (NS, OOM, TLE, FAIL) is marked with its status at the bottom of the panel, never
drawn as 0. Prints every plotted number.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

import logs
import style

FIGURE = "e2e"
ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("dense", "full", "flex", "native", "sparsevit", "floor")
LABELS = {"dense": "SDPA + bool mask", "full": "dense SDPA (no mask)",
          "flex": "FlexAttention", "native": "native structured", "sparsevit": "sparsevit",
          "floor": "no-attention floor"}
COLOURS = {"dense": style.BASELINE_GREY, "full": "#000000", "flex": style.PALETTE[0],
           "native": style.PALETTE[2], "sparsevit": style.PALETTE[3], "floor": style.PALETTE[4]}
SPEEDUP_OVER = ("full", "native")  # the first that ran somewhere in a figure
PER_ROW = 3  # models per row of panels (each model: a latency and a speedup panel)


def read_cell_ids(cells_sh: Path) -> list[str]:
    out = subprocess.run(["bash", str(cells_sh)], capture_output=True, text=True, check=True)
    return out.stdout.split()


def parse_cell(cell: str) -> tuple[str, str, str, str]:
    """'RegionViT-S-2048-b1-eager' -> ('RegionViT-S', '2048', '1', 'eager')."""
    rest, mode = cell.rsplit("-", 1)
    rest, batch = rest.rsplit("-b", 1)
    model, res = rest.rsplit("-", 1)
    return model, res, batch, mode


def grid_of(cells: list[str], batch: str, mode: str) -> dict[str, list[str]]:
    """{model: resolutions} of the cells with this batch and mode, in cells.sh order."""
    models: dict[str, list[str]] = {}
    for cell in cells:
        model, res, b, m = parse_cell(cell)
        if (b, m) == (batch, mode):
            models.setdefault(model, []).append(res)
    return models


def draw(logset: logs.LogSet, models: dict[str, list[str]], device: str, batch: str,
         mode: str) -> tuple[Any, list[dict[str, Any]]]:
    ncols = min(PER_ROW, len(models))
    nrows = 2 * -(-len(models) // ncols)
    fig, axes = style.new_figure(nrows, ncols, width=2.8 * ncols, row_height=2.0)
    table: list[dict[str, Any]] = []
    missing: list[logs.Key] = []
    times_of = {model: {b: [logs.number(_row(logset, logs.Key(
        FIGURE, device, model, r, f"{b}-b{batch}-{mode}"), missing), "median_us")
        for r in resolutions] for b in BACKENDS} for model, resolutions in models.items()}
    over = next((b for b in SPEEDUP_OVER if any(logs.is_number(v) for times in times_of.values()
                                                for v in times[b])), SPEEDUP_OVER[0])
    for i, (model, resolutions) in enumerate(models.items()):
        top, bottom = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
        times = times_of[model]
        x = np.array([int(r) for r in resolutions], dtype=float)
        _latency(top, x, times)
        _speedup(bottom, x, times, over)
        top.set_title(model)
        top.set_ylabel("forward time (ms)")
        bottom.set_ylabel(f"speedup over {over}")
        for i, res in enumerate(resolutions):
            base = times[over][i]
            for b in BACKENDS:
                t = times[b][i]
                both = logs.is_number(t) and logs.is_number(base)
                table.append({"model": model, "px": res, "backend": b,
                              "median ms": t / 1e3 if logs.is_number(t) else t,
                              f"speedup over {over}": base / t if both else None})
    for i in range(len(models), nrows // 2 * ncols):  # empty places of the last row
        axes[2 * (i // ncols), i % ncols].set_axis_off()
        axes[2 * (i // ncols) + 1, i % ncols].set_axis_off()
    handles = [Line2D([], [], color=COLOURS[b], marker="o", ms=3,
                      ls="--" if b == "floor" else "-", label=LABELS[b]) for b in BACKENDS]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(BACKENDS),
               title=f"{device}, batch {batch}, {mode}; speedup over {LABELS[over]}")
    if missing:
        logset.warn(f"{len(missing)} of {len(table)} cells have no log (not run): drawn as NS")
    return fig, table


def _row(logset: logs.LogSet, key: logs.Key, missing: list[logs.Key]) -> dict[str, Any]:
    """The cell's row; a cell without a log is NS (not run), collected in ``missing``."""
    if key not in logset.cells:
        missing.append(key)
        return {"status": "NS", "reason": "not run"}
    return logset.expect(key)


def _latency(ax: Axes, x: np.ndarray, times: dict[str, list[Any]]) -> None:
    found = [v / 1e3 for values in times.values() for v in values if logs.is_number(v) and v > 0]
    if not found:  # nothing ran for this model: one NS mark for the panel
        style.mark_panel(ax, "NS")
        return
    for b, values in times.items():
        y = np.array([v / 1e3 if logs.is_number(v) else np.nan for v in values])
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color=COLOURS[b],
                ls="--" if b == "floor" else "-")
    _mark_sentinels(ax, x, times)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(min(found) / 2, max(found) * 2)
    ax.set_xticks(x, [str(int(v)) for v in x], fontsize=6)


def _speedup(ax: Axes, x: np.ndarray, times: dict[str, list[Any]], over: str) -> None:
    base = times[over]
    if not any(logs.is_number(v) for v in base):
        style.mark_panel(ax, "NS")
        return
    for b, values in times.items():
        y = np.array([s / v if logs.is_number(s) and logs.is_number(v) and v > 0 else np.nan
                      for s, v in zip(base, values, strict=True)])
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color=COLOURS[b],
                ls="--" if b == "floor" else "-")
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(int(v)) for v in x], fontsize=6)
    ax.set_xlabel("resolution (px)")


def _mark_sentinels(ax: Axes, x: np.ndarray, times: dict[str, list[Any]]) -> None:
    """Each backend's non-numbers as small status labels along the bottom of the panel."""
    for row, (b, values) in enumerate(times.items()):
        for xi, v in zip(x, values, strict=True):
            if not logs.is_number(v):
                ax.annotate(str(v), (xi, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2 + 6 * row), textcoords="offset points",
                            ha="center", fontsize=4.5, color=COLOURS[b],
                            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.2})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", help="device tag of the logs to plot (default: most)")
    parser.add_argument("--cells", type=Path, default=ROOT / "ae" / FIGURE / "cells.sh",
                        help="script printing the cell ids (default: %(default)s)")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--mode", default="eager", choices=("eager", "compile"))
    args = parser.parse_args(argv)
    try:
        cells = read_cell_ids(args.cells)
        logset = logs.load_dir(args.log_dir, figure=FIGURE)
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        print(f"plot/e2e.py: error: {e}", file=sys.stderr)
        return 2
    models = grid_of(cells, args.batch, args.mode)
    if not models:
        print(f"plot/e2e.py: error: no cell with batch {args.batch} and mode {args.mode}",
              file=sys.stderr)
        return 2
    device = logs.pick_device(logset, args.device)
    fig, table = draw(logset, models, device, args.batch, args.mode)
    written = style.save(fig, args.out, f"e2e_b{args.batch}_{args.mode}")
    style.print_table(table, title=f"e2e ({device}, batch {args.batch}, {args.mode}): median "
                                   "ms per backend and speedup")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
