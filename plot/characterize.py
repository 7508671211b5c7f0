"""Characterization figures RQ1-RQ5 (logs of ``sparsevit characterize run rqN``).

    python plot/characterize.py --figure rq1 --log-dir backup_logs/rq1 --out figures/rq1

The cells each figure expects come from ae/<figure>/cells.json (``sparsevit
characterize cells <figure> --json``): a cell without a log is drawn as NS and warned
about; OOM, NS, TLE and FAIL are drawn as labelled marks, and the distinct reasons of the
non-OK cells are printed under the figure. Every plotted number is printed as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import logs
import style

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("rq1", "rq2", "rq3", "rq4", "rq5")
Cell = dict[str, Any]
Row = dict[str, Any]


# ------------------------------------------------------------------- shared with scalability


def load_cells(path: Path, figure: str) -> list[Cell]:
    doc = json.loads(path.read_text())
    if doc.get("figure") != figure:
        raise ValueError(f"{path}: not the {figure} figure's cells")
    return doc["cells"]


def cell_row(logset: logs.LogSet, figure: str, device: str, cell: Cell) -> Row:
    """The cell's RESULT row; the kit runner's FAIL/TLE log when the cell has none."""
    key = logs.Key(figure, device, cell["model"], cell["resolution"], cell["system"])
    runner_key = logs.Key(figure, device, cell["id"], "cell", "runner")
    if key not in logset.cells and runner_key in logset.cells:
        return logset.cells[runner_key].rows[0]
    return logset.expect(key)


def _field(row: Row, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def metric(row: Row, path: str) -> float | str:
    """A (dotted) field of a RESULT row as a number, or the row's sentinel status (NS
    for an OK row without that number)."""
    if row["status"] != "OK":
        return row["status"]
    value = _field(row, path)
    return float(value) if logs.is_number(value) else "NS"


def reasons_note(fig: Figure, rows: Sequence[tuple[str, Row]]) -> list[str]:
    """Write the distinct reasons of non-OK cells under the figure; return them."""
    found: dict[str, list[str]] = {}
    for cell_id, row in rows:
        if row["status"] != "OK":
            text = f"{row['status']}: {str(row.get('reason', '')).strip() or 'no reason'}"
            found.setdefault(text, []).append(cell_id)
    lines = [f"{text} ({len(ids)} cell{'s' * (len(ids) > 1)})" for text, ids in found.items()]
    if lines:
        wrapped = "\n".join(textwrap.shorten(line, 170) for line in lines[:6])
        fig.text(0.0, -0.01, wrapped, fontsize=5.5, va="top", ha="left", color="#444444")
    return lines


def sentinel_marks(ax: Axes, xs: Sequence[float], values: Sequence[float | str],
                   colour: str, y: float) -> None:
    """Non-numeric values as the status word at height ``y`` (axis coordinates)."""
    for x, value in zip(xs, values, strict=True):
        if not logs.is_number(value):
            st = style.SENTINEL_STYLE[value]
            ax.annotate(value, (x, y), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=5, color=st["color"], weight="bold",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": colour,
                              "lw": 0.6})


def lines(ax: Axes, xs: Sequence[float], series: dict[str, list[float | str]],
          colours: dict[str, str], ylabel: str, logy: bool = False) -> None:
    for i, (name, values) in enumerate(series.items()):
        pts = [(x, v) for x, v in zip(xs, values, strict=True) if logs.is_number(v)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.1, color=colours[name],
                    label=name)
        sentinel_marks(ax, xs, values, colours[name], 0.04 + 0.07 * i)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)


# ---------------------------------------------------------------------------- figures


class Data:
    """One figure's cells and rows, addressed by settings."""

    def __init__(self, cells: list[Cell], rows: dict[str, Row]) -> None:
        self.cells, self.rows = cells, rows

    def find(self, **match: Any) -> list[tuple[Cell, Row]]:
        return [(c, self.rows[c["id"]]) for c in self.cells
                if all(c["settings"].get(k) == v for k, v in match.items())]

    def one(self, **match: Any) -> Row:
        found = self.find(**match)
        return found[0][1] if found else {"status": "NS", "reason": "not a cell of this figure"}

    def values(self, key: str, **match: Any) -> list[Any]:
        return list(dict.fromkeys(c["settings"][key] for c, _ in self.find(**match)))


def model_name(settings: dict[str, Any]) -> str:
    if settings["model"] == "vit":
        return f"vit{settings['patch']}x{settings['depth']}x{settings['dim']}"
    return str(settings["model"])


def table_row(cell: Cell, row: Row, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"cell": cell["id"], "status": row["status"]}
    for key in keys:
        value = metric(row, key)
        if value == "NS" and row["status"] == "OK":  # a text field, or absent
            value = _field(row, key) if isinstance(_field(row, key), str) else "-"
        out[key.rsplit(".", 1)[-1]] = value
    if row["status"] != "OK":
        out["reason"] = str(row.get("reason", ""))[:50]
    return out


def rq1(data: Data) -> tuple[Figure, list[dict[str, Any]]]:
    patches, depths, dims = (data.values(k) for k in ("patch", "depth", "dim"))
    metrics = (("throughput_img_s", "throughput (img/s, log)", True),
               ("latency_p50_ms", "latency p50 (ms, log)", True),
               ("profile.gpu_busy_pct", "GPU busy (% of span)", False))
    fig, axes = style.new_figure(len(metrics), len(patches), width=2.5 * len(patches),
                                 row_height=2.1)
    colours = style.palette([f"dim {d}" for d in dims])
    for j, patch in enumerate(patches):
        for i, (key, label, logy) in enumerate(metrics):
            ax = axes[i, j]
            series = {f"dim {d}": [metric(data.one(patch=patch, depth=dp, dim=d), key)
                                   for dp in depths] for d in dims}
            lines(ax, depths, series, colours, label if j == 0 else "", logy)
            if key == "latency_p50_ms":  # p99 as a thin line above p50
                for d in dims:
                    p99 = [metric(data.one(patch=patch, depth=dp, dim=d), "latency_p99_ms")
                           for dp in depths]
                    pts = [(x, v) for x, v in zip(depths, p99, strict=True)
                           if logs.is_number(v)]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), lw=0.6, ls=":",
                                color=colours[f"dim {d}"])
            if key == "profile.gpu_busy_pct":
                ax.set_ylim(0, 105)
            ax.set_xticks(depths)
            if i == 0:
                ax.set_title(f"patch {patch}")
            if i == len(metrics) - 1:
                ax.set_xlabel("depth")
    axes[0, 0].legend(fontsize=5.5)
    fig.suptitle("RQ1: ViT architecture (224 px, batch 8, bf16; p99 dotted)")
    keys = ("throughput_img_s", "latency_p50_ms", "latency_p99_ms", "profile.gpu_busy_pct",
            "profile.gaps_over_10us", "params_m")
    return fig, [table_row(c, r, keys) for c, r in data.find()]


def rq2(data: Data) -> tuple[Figure, list[dict[str, Any]]]:
    names = list(dict.fromkeys(f"{model_name(c['settings'])} / {c['settings']['attn']}"
                               for c in data.cells))
    # Colour by model, line style by attention backend (dense solid, sparsevit dashed).
    model_colours = style.palette(list(dict.fromkeys(n.split(" / ")[0] for n in names)))
    colours = {n: model_colours[n.split(" / ")[0]] for n in names}
    dashes = {n: "--" if n.endswith("/ sparsevit") else "-" for n in names}
    resolutions = sorted({c["settings"]["resolution"] for c in data.cells})
    metrics = (("latency_p50_ms", "latency p50 (ms, log)", True),
               ("throughput_img_s", "throughput (img/s, log)", True),
               ("profile.gpu_busy_pct", "GPU busy (% of span)", False))
    fig, axes = style.new_figure(1, len(metrics), width=9.0, row_height=3.4)
    for ax, (key, label, logy) in zip(axes[0], metrics, strict=True):
        series = {}
        for name in names:
            by_res = {c["settings"]["resolution"]: r for c, r in data.find()
                      if f"{model_name(c['settings'])} / {c['settings']['attn']}" == name}
            series[name] = [metric(by_res[res], key) if res in by_res else np.nan
                            for res in resolutions]
        _lines_sparse(ax, resolutions, series, colours, label, logy, dashes)
        ax.set_xscale("log", base=2)
        ax.set_xticks(resolutions, [str(r) for r in resolutions])
        ax.set_xlabel("resolution (px)")
        if key == "profile.gpu_busy_pct":
            ax.set_ylim(0, 105)
    axes[0, 0].legend(fontsize=5, ncols=2)
    fig.suptitle("RQ2: resolution, batch 1, bf16 (model / attention backend; sparsevit dashed)")
    keys = ("latency_p50_ms", "latency_p99_ms", "throughput_img_s", "profile.gpu_busy_pct",
            "build_s")
    return fig, [table_row(c, r, keys) for c, r in data.find()]


def _lines_sparse(ax: Axes, xs: Sequence[float], series: dict[str, list[Any]],
                  colours: dict[str, str], label: str, logy: bool,
                  dashes: dict[str, str]) -> None:
    """Like ``lines``, but a series need not have a cell at every x (NaN: no cell)."""
    for i, (name, values) in enumerate(series.items()):
        pts = [(x, v) for x, v in zip(xs, values, strict=True)
               if logs.is_number(v) and not np.isnan(v)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.1, color=colours[name],
                    ls=dashes[name], label=name)
        marks = [(x, v) for x, v in zip(xs, values, strict=True) if not logs.is_number(v)]
        if marks:
            sentinel_marks(ax, [m[0] for m in marks], [m[1] for m in marks], colours[name],
                           0.04 + 0.05 * i)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(label)


def rq3(data: Data) -> tuple[Figure, list[dict[str, Any]]]:
    models = list(dict.fromkeys(model_name(c["settings"]) for c in data.cells))
    modes = ["eager", "default", "reduce-overhead", "max-autotune"]
    colours = style.palette(modes, baseline="eager")
    fig, axes = style.new_figure(1, 3, width=9.0, row_height=3.0)

    def per(key: str, mode: str) -> list[float | str]:
        return [metric(data.one(compile=mode, **_arch(data, m)), key) for m in models]

    eager = per("throughput_img_s", "eager")
    speedup = {mode: [v / e if logs.is_number(v) and logs.is_number(e) else v
                      for v, e in zip(per("throughput_img_s", mode), eager, strict=True)]
               for mode in modes}
    style.bars(axes[0, 0], models, speedup, colours, "throughput / eager (x)")
    axes[0, 0].axhline(1.0, color="black", lw=0.6)
    style.bars(axes[0, 1], models, {m: per("latency_p50_ms", m) for m in modes}, colours,
               "latency p50 (ms)")
    compiled = modes[1:]
    style.bars(axes[0, 2], models, {m: per("compile_s", m) for m in compiled},
               {m: colours[m] for m in compiled}, "compile time (s, apart from timing)")
    for ax in axes[0]:
        ax.tick_params(axis="x", labelsize=6)
    axes[0, 2].legend(handles=style.legend_handles(colours), loc="upper right", fontsize=5.5)
    fig.suptitle("RQ3: torch.compile modes (224 px, batch 8, bf16, sync pipeline)")
    keys = ("throughput_img_s", "latency_p50_ms", "compile_s", "applied.graph_breaks",
            "profile.gpu_busy_pct")
    return fig, [table_row(c, r, keys) for c, r in data.find()]


def _arch(data: Data, name: str) -> dict[str, Any]:
    for c in data.cells:
        if model_name(c["settings"]) == name:
            s = c["settings"]
            return {"model": s["model"], "patch": s["patch"], "depth": s["depth"],
                    "dim": s["dim"]}
    return {}


def rq4(data: Data) -> tuple[Figure, list[dict[str, Any]]]:
    models = list(dict.fromkeys(model_name(c["settings"]) for c in data.cells))
    batches = data.values("batch")
    bindings = ["none", "local", "remote"]
    colours = style.palette(bindings, baseline="none")
    groups = [(m, b) for m in models for b in batches]
    labels = [f"{m}\nbatch {b}" for m, b in groups]
    fig, axes = style.new_figure(1, 2, width=9.0, row_height=3.0)
    for ax, (key, label) in zip(axes[0], (("throughput_img_s", "throughput (img/s)"),
                                          ("latency_p50_ms", "latency p50 (ms)")), strict=True):
        series = {b: [metric(data.one(numa=b, batch=batch, **_arch(data, m)), key)
                      for m, batch in groups] for b in bindings}
        style.bars(ax, labels, series, colours, label)
        ax.tick_params(axis="x", labelsize=5.5)
    axes[0, 0].legend(handles=style.legend_handles({
        f"numactl {k}" if k != "none" else "no binding": v for k, v in colours.items()}),
        loc="upper left", fontsize=5.5)
    fig.suptitle("RQ4: NUMA binding (CPU + memory) with CPU preprocessing")
    keys = ("throughput_img_s", "latency_p50_ms", "prep_p50_ms", "applied.mems_allowed")
    return fig, [table_row(c, r, keys) for c, r in data.find()]


def rq5(data: Data) -> tuple[Figure, list[dict[str, Any]]]:
    batches = data.values("batch")
    configs = [("sync", 1)] + [("async", q) for q in sorted(data.values(
        "queue_depth", pipeline="async"))]
    groups = ["sync" if p == "sync" else f"async q{q}" for p, q in configs]
    places = data.values("preprocess")
    colours = style.palette([f"{p} preprocessing" for p in places])
    metrics = (("throughput_img_s", "throughput (img/s)"), ("latency_p50_ms", "latency p50 (ms)"),
               ("serial_over_wall", "stage time / wall time (>1: overlap, <1: GPU waits)"))
    fig, axes = style.new_figure(len(batches), len(metrics), width=9.0, row_height=2.2)
    for i, batch in enumerate(batches):
        for j, (key, label) in enumerate(metrics):
            series = {f"{p} preprocessing": [_rq5_metric(data.one(
                batch=batch, pipeline=mode, queue_depth=q, preprocess=p), key)
                for mode, q in configs] for p in places}
            ax = axes[i, j]
            style.bars(ax, groups, series, colours, f"batch {batch}" if j == 0 else "")
            ax.tick_params(axis="x", labelsize=5.5)
            if i == 0:
                ax.set_title(label)
            if key == "serial_over_wall":
                ax.axhline(1, color="black", lw=0.5)
    axes[0, 0].legend(handles=style.legend_handles(colours), loc="upper left", fontsize=5.5)
    fig.suptitle("RQ5: pipeline design (vit16x12x768, 224 px from 280 px uint8 frames)")
    keys = ("throughput_img_s", "latency_p50_ms", "latency_p99_ms", "overlap_efficiency",
            "prep_p50_ms", "h2d_p50_ms", "compute_p50_ms", "applied.max_in_flight",
            "profile.gpu_busy_pct")
    table = [{**table_row(c, r, keys), "stage/wall": _rq5_metric(r, "serial_over_wall")}
             for c, r in data.find()]
    return fig, table


def _rq5_metric(row: Row, key: str) -> float | str:
    """``serial_over_wall``: the summed stage times (host preprocessing, H2D, compute,
    D2H) over the wall time of the same batches; well defined even where one stage is
    all the work (the logged overlap_efficiency then divides by almost nothing)."""
    if key != "serial_over_wall":
        return metric(row, key)
    serial, wall = metric(row, "serial_ms"), metric(row, "wall_ms")
    return serial / wall if logs.is_number(serial) and logs.is_number(wall) else serial


DRAW: dict[str, Callable[[Data], tuple[Figure, list[dict[str, Any]]]]] = {
    "rq1": rq1, "rq2": rq2, "rq3": rq3, "rq4": rq4, "rq5": rq5}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", required=True, choices=FIGURES)
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", help="device tag of the logs to plot (default: most)")
    parser.add_argument("--cells", type=Path, help="default: ae/<figure>/cells.json")
    args = parser.parse_args(argv)
    figure = args.figure
    try:
        cells = load_cells(args.cells or ROOT / "ae" / figure / "cells.json", figure)
        logset = logs.load_dir(args.log_dir, figure=figure)
    except (OSError, ValueError, KeyError) as e:
        print(f"plot/characterize.py: error: {e}", file=sys.stderr)
        return 2
    device = logs.pick_device(logset, args.device)
    rows = {c["id"]: cell_row(logset, figure, device, c) for c in cells}
    fig, table = DRAW[figure](Data(cells, rows))
    notes = reasons_note(fig, [(c["id"], rows[c["id"]]) for c in cells])
    written = style.save(fig, args.out, figure)
    style.print_table(table, title=f"{figure} ({device}): every plotted number")
    if notes:
        print("\nnot OK:\n" + "\n".join(f"  {n}" for n in notes))
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
