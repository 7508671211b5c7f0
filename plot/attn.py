"""Attention figure: sparsevit's attention time against every baseline on the same mask
(logs from ``sparsevit bench-attn``; bf16, B=1, H=12, d=64).

    python plot/attn.py --log-dir backup_logs/attn --out figures/attn

One panel per (model, resolution) cell of ae/attn/cells.txt: median time per backend on a
log axis with p20-p80 whiskers, and 'best baseline / ours' (best baseline: the fastest
non-sparsevit backend that ran and passed its check; ours: sparsevit on inputs in the
original token order, its rows gathered in place). Writes attn as PDF and PNG and prints
every plotted number.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

import logs
import style

FIGURE = "attn"
CELLS = Path(__file__).resolve().parent.parent / "ae" / "attn" / "cells.txt"
# sparsevit's backend registry (src/sparsevit/baselines.py), in its order; a backend
# found only in the logs is plotted after these.
BACKENDS = ("naive", "naive_compiled", "sdpa_math", "sdpa_mem_efficient", "sdpa_flash",
            "sdpa_cudnn", "flex_b64_original", "flex_b64_reordered", "flex_b128_original",
            "flex_b128_reordered", "flash_attn", "native_window", "native_gather",
            "sparsevit", "sparsevit_ordered")
OURS = "sparsevit"  # the headline number: permutation of inputs and output included
COLOURS = {"ours": style.PALETTE[3], "sparse": style.PALETTE[0], "dense": style.BASELINE_GREY}
LEGEND = {"ours": "sparsevit (ours)", "sparse": "sparse baseline",
          "dense": "dense baseline (computes every entry)"}
STUB_DECADES = 0.6  # height of a sentinel stub on the log axis


def is_ours(backend: str) -> bool:
    return backend.startswith("sparsevit")


def backend_order(logset: logs.LogSet, device: str) -> list[str]:
    found = {k.system for k in logset.cells if k.device == device}
    return [*BACKENDS, *sorted(found - set(BACKENDS))]


def labels(logset: logs.LogSet, backends: Sequence[str]) -> dict[str, str]:
    """Each backend's label as its logs spell it (from any cell), '(dense)' made visible;
    the backend name where no log has one."""
    found: dict[str, dict[str, Any]] = {}
    for key, cell in logset.cells.items():
        found.setdefault(key.system, cell.rows[0])
    out = {}
    for name in backends:
        row = found.get(name, {})
        label = str(row.get("label") or name)
        if row.get("dense") and "(dense)" not in label:
            label += " (dense)"
        out[name] = label
    return out


def kind(backend: str, row: dict[str, Any], dense: dict[str, bool]) -> str:
    if is_ours(backend):
        return "ours"
    return "dense" if row.get("dense", dense.get(backend, False)) else "sparse"


def draw(logset: logs.LogSet, models: dict[str, tuple[str, ...]],
         device: str) -> tuple[Figure, list[dict[str, Any]], list[dict[str, Any]]]:
    """The figure, the table of every bar and the table of each panel's ratio."""
    cells = [(m, r) for m, resolutions in models.items() for r in resolutions]
    backends = backend_order(logset, device)
    names = labels(logset, backends)
    dense = {k.system: bool(c.rows[0].get("dense")) for k, c in logset.cells.items()}
    ncols = min(2, len(cells))
    nrows = -(-len(cells) // ncols)
    fig, axes = style.new_figure(nrows, ncols, width=3.6 * ncols, row_height=3.3)
    bars: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for ax, (model, res) in zip(axes.flat, cells, strict=False):
        rows = {b: logset.expect(logs.Key(FIGURE, device, model, res, b)) for b in backends}
        bars += [_table_row(model, res, b, rows, names) for b in backends]
        ratios.append(_panel(ax, model, res, rows, names, dense))
    for ax in axes.flat[len(cells):]:
        ax.set_axis_off()
    handles = [Patch(facecolor=COLOURS[k], label=LEGEND[k]) for k in COLOURS]
    handles += [Patch(facecolor="white", edgecolor=s["color"], hatch=s["hatch"],
                      label={"OOM": "OOM: out of memory", "NS": "NS: not supported / not run",
                             "TLE": "TLE: time limit", "FAIL": "FAIL: crash or wrong result"}[n])
                for n, s in style.SENTINEL_STYLE.items()]
    fig.legend(handles=handles, loc="outside upper center", ncols=4)
    return fig, bars, ratios


def _panel(ax: Axes, model: str, res: str, rows: dict[str, dict[str, Any]],
           names: dict[str, str], dense: dict[str, bool]) -> dict[str, Any]:
    """One cell's bars; returns its row of the ratio table."""
    median = {b: logs.number(row, "median_us") for b, row in rows.items()}
    found = [v for v in median.values() if logs.is_number(v) and v > 0]
    lo = 10 ** np.floor(np.log10(min(found, default=10.0)) - 0.8)
    hi = 10 ** np.ceil(np.log10(max(found, default=1e4)) + 0.5)
    x = np.arange(len(rows))
    for xi, (b, row) in zip(x, rows.items(), strict=True):
        value, what = median[b], kind(b, row, dense)
        if not logs.is_number(value):
            style.sentinel_bar(ax, xi, 0.8, value, lo, lo * 10**STUB_DECADES,
                               lo * 10 ** (STUB_DECADES + 0.08))
            continue
        err = [[max(value - _num(row, "p20_us", value), 0)],
               [max(_num(row, "p80_us", value) - value, 0)]]
        ax.bar(xi, value - lo, 0.8, bottom=lo, color=COLOURS[what], yerr=err, capsize=1.5,
               error_kw={"lw": 0.6, "capthick": 0.6},
               edgecolor="black" if what == "ours" else "none", lw=0.8)
        ax.text(xi, _num(row, "p80_us", value) * 1.2, _short(value), rotation=90,
                ha="center", va="bottom", fontsize=5)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xticks(x, [names[b] for b in rows], rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=5.5)
    for tick, b in zip(ax.get_xticklabels(), rows, strict=True):
        if is_ours(b):
            tick.set_color(COLOURS["ours"])
            tick.set_weight("bold")
    ax.set_ylabel("median time (µs, log)")
    baselines = {b: v for b, v in median.items() if not is_ours(b)}
    label = style.speedup_label(baselines, median[OURS])
    best = min((b for b, v in baselines.items() if logs.is_number(v) and v > 0),
               key=baselines.__getitem__, default=None)
    against = names[best] if best is not None and "n/a" not in label else "-"
    ax.set_title(f"{model} {res} px: {label}\nbest baseline: {against}")
    return {"model": model, "px": res, "best baseline": names[best] if best else "-",
            "best us": baselines[best] if best else "NS", "sparsevit us": median[OURS],
            "best / ours": label.rsplit("= ", 1)[1]}


def _short(us: float) -> str:
    """'76.5', '2.62k', '59k': a bar's number, short enough to sit above it."""
    return f"{us:.3g}" if us < 1000 else f"{us / 1000:.3g}k"


def _num(row: dict[str, Any], name: str, default: float) -> float:
    value = row.get(name)
    return float(value) if logs.is_number(value) else default


def _table_row(model: str, res: str, backend: str, rows: dict[str, dict[str, Any]],
               names: dict[str, str]) -> dict[str, Any]:
    row, ours = rows[backend], logs.number(rows[OURS], "median_us")
    median = logs.number(row, "median_us")
    both = logs.is_number(median) and logs.is_number(ours) and ours > 0
    return {
        "model": model, "px": res, "backend": backend, "label": names[backend],
        "status": row["status"], "median us": median,
        "p20 us": row.get("p20_us") if median == row.get("median_us") else None,
        "p80 us": row.get("p80_us") if median == row.get("median_us") else None,
        "x sparsevit": median / ours if both else None,
        "reason": str(row.get("reason", ""))[:60],
    }


def main(argv: Sequence[str] | None = None) -> int:
    inputs = logs.open_figure(argv, FIGURE, CELLS, __doc__.splitlines()[0])
    if inputs is None:
        return 2
    args, models, logset, device = inputs.args, inputs.models, inputs.logset, inputs.device
    inputs.warn_unplotted(FIGURE, backend_order(logset, device))
    fig, bars, ratios = draw(logset, models, device)
    written = style.save(fig, args.out, "attn")
    style.print_table(ratios, title=f"attn figure ({device}): best baseline vs sparsevit")
    style.print_table(bars, title=f"attn figure ({device}): median time per backend (us)")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
