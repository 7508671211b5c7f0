"""Reorder figure: the attention matrix before and after each token reordering, and the
tiles a block-sparse kernel must compute (logs from ``sparsevit reorder-study``).

    python plot/reorder.py --log-dir backup_logs/reorder --out figures/reorder

Writes reorder_heatmap (whole matrix), reorder_heatmap_zoom (top-left corner) and
reorder_fill, each as PDF and PNG, and prints every plotted number.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, LogNorm
from matplotlib.figure import Figure

import logs
import style

FIGURE = "reorder"
# The figure's models and resolutions, shared with ae/reorder/run.sh.
CELLS = Path(__file__).resolve().parent.parent / "ae" / "reorder" / "cells.txt"
METHODS = ("none", "rcm", "hc", "ic", "hilbert", "morton", "tiled", "grouped")
TILES = ("32x32", "64x64", "128x128")
LABEL_TILE = "64x64"  # the tile size quoted under each heatmap


def _pct(value: float | str) -> float | str:
    return 100 * value if logs.is_number(value) else value


def draw_heatmaps(logset: logs.LogSet, models: dict[str, tuple[str, ...]], device: str,
                  view: str) -> Figure:
    """Rows: model (at its largest resolution); columns: reorder method."""
    fig, axes = style.new_figure(len(models), len(METHODS), width=1.4 * len(METHODS) + 1,
                                 row_height=1.6)
    cmap = matplotlib.colormaps["magma_r"].with_extremes(bad="white")
    norm = LogNorm(vmin=1 / 255, vmax=1)
    for r, (model, resolutions) in enumerate(models.items()):
        res = max(resolutions, key=logs.natural_key)
        for c, method in enumerate(METHODS):
            ax = axes[r, c]
            _heatmap_panel(ax, logset, logs.Key(FIGURE, device, model, res, method), view,
                           cmap, norm)
            if r == 0:
                ax.set_title(method, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{model}\n{res} px")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.5,
                 label="attended fraction of bin")
    what = "whole matrix" if view == "full" else "zoom on the top-left corner"
    fig.suptitle(f"Attention matrix per token reordering ({what}; white: empty)")
    return fig


def _heatmap_panel(ax: Axes, logset: logs.LogSet, key: logs.Key, view: str,
                   cmap: Colormap, norm: LogNorm) -> None:
    ax.grid(False)
    ax.spines[:].set_visible(True)  # a frame around each matrix, empty or not
    row = logset.expect(key, kind="heatmap", view=view)
    status = row["status"]
    if status == "OK":
        try:
            data = logs.decode_array(row)
            extent = int(row["tokens"])
        except (KeyError, TypeError, ValueError) as e:
            logset.warn(f"{key}: {view} heatmap unreadable ({e}): drawn as NS")
            status = "NS"
    if status != "OK":
        style.mark_panel(ax, status)
        return
    ax.imshow(np.ma.masked_equal(data, 0) / 255, cmap=cmap, norm=norm,
              extent=(0, extent, extent, 0), interpolation="nearest")
    ax.set_xticks([0, extent])  # the token count, without a tick forest
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=6, pad=1)
    tiles = logset.expect(key, kind="tiles", tile=LABEL_TILE)
    frac, fill = logs.number(tiles, "tiles_frac"), logs.number(tiles, "fill")
    if logs.is_number(frac) and logs.is_number(fill):
        ax.set_xlabel(f"{frac:.1%} of {LABEL_TILE} tiles\nfill {fill:.0%}", fontsize=6,
                      labelpad=0)


def draw_fill(logset: logs.LogSet, models: dict[str, tuple[str, ...]],
              device: str) -> tuple[Figure, list[dict[str, object]]]:
    """Per model two rows (fill, tiles touched), one column per resolution; grouped bars
    of tile size x method. Returns the figure and the table of its numbers."""
    colours = style.palette(METHODS, baseline="none")
    ncols = max(len(r) for r in models.values())
    fig, axes = style.new_figure(2 * len(models), ncols, width=3.4 * ncols, row_height=1.55)
    table: list[dict[str, object]] = []
    for m, (model, resolutions) in enumerate(models.items()):
        for c, res in enumerate(resolutions):
            fill: dict[str, list[float | str]] = {}
            frac: dict[str, list[float | str]] = {}
            for method in METHODS:
                key = logs.Key(FIGURE, device, model, res, method)
                rows = [logset.expect(key, kind="tiles", tile=t) for t in TILES]
                fill[method] = [_pct(logs.number(row, "fill")) for row in rows]
                frac[method] = [_pct(logs.number(row, "tiles_frac")) for row in rows]
                table += [_table_row(model, res, method, tile, row)
                          for tile, row in zip(TILES, rows, strict=True)]
            style.bars(axes[2 * m, c], TILES, fill, colours, ylabel="fill (%)")
            axes[2 * m, c].set_title(f"{model} {res} px")
            style.bars(axes[2 * m + 1, c], _ratio_labels(frac), frac, colours,
                       ylabel="tiles touched (%)")
            axes[2 * m + 1, c].tick_params(axis="x", labelsize=6)
        for ax in axes[2 * m: 2 * m + 2, len(resolutions):].flat:  # a model with fewer sizes
            ax.set_axis_off()
    fig.legend(handles=style.legend_handles(colours), loc="outside upper center",
               ncols=len(METHODS))
    return fig, table


def _ratio_labels(frac: dict[str, list[float | str]]) -> list[str]:
    """Tile-size labels with how many times fewer tiles the best reordering touches."""
    labels = []
    for i, tile in enumerate(TILES):
        reordered = [v[i] for name, v in frac.items() if name != "none"]
        best = min((v for v in reordered if logs.is_number(v)), default="NS")
        labels.append(f"{tile}\n" + style.speedup_label({"none": frac["none"][i]}, best,
                                                        text="none/best"))
    return labels


def _table_row(model: str, res: str, method: str, tile: str,
               row: dict[str, object]) -> dict[str, object]:
    return {
        "model": model, "px": res, "method": method, "tile": tile, "status": row["status"],
        "tiles": row.get("tiles"), "tiles %": _pct(logs.number(row, "tiles_frac")),
        "fill %": _pct(logs.number(row, "fill")), "full": row.get("full"),
        "reorder s": row.get("reorder_s"), "extract s": row.get("extract_s"),
        "reason": row.get("reason", ""),
    }


def main(argv: Sequence[str] | None = None) -> int:
    inputs = logs.open_figure(argv, FIGURE, CELLS, __doc__.splitlines()[0])
    if inputs is None:
        return 2
    args, models, logset, device = inputs.args, inputs.models, inputs.logset, inputs.device
    inputs.warn_unplotted(FIGURE, METHODS)
    written = []
    for view, name in (("full", "reorder_heatmap"), ("zoom", "reorder_heatmap_zoom")):
        written += style.save(draw_heatmaps(logset, models, device, view), args.out, name)
    fig, table = draw_fill(logset, models, device)
    written += style.save(fig, args.out, "reorder_fill")
    style.print_table(table, title=f"reorder figure ({device}): tiles touched and fill")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
