"""Ablation figure: what each T2/T4 choice buys (logs of ``sparsevit ablation``).

    python plot/ablation.py --log-dir backup_logs/ablation --out figures/ablation

One panel per (model, resolution) of ae/ablation/cells.txt: median time (log axis,
p20-p80 whiskers) of dense FlashAttention (SDPA flash), FlexAttention (its better
setting), then sparsevit for each reorder x schedule (fixed, greedy, ilp). The panel
title is the speedup of ours (the best ILP bar) over the best baseline. Tables: every
bar; ILP against greedy and fixed per reorder; the schedules' predicted time against
the measured one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

import logs
import style

FIGURE = "ablation"
CELLS = Path(__file__).resolve().parent.parent / "ae" / "ablation" / "cells.txt"
REORDERS = ("none", "rcm", "hc", "ic", "hilbert")
METHODS = ("fixed", "greedy", "ilp")
BASELINES = {"flash": "FlashAttention-2 in SDPA (dense)", "flex": "FlexAttention"}
SHORT = {"flash": "FA2", "flex": "Flex"}  # tick labels under the baseline bars
OURS = tuple(f"{r}-{m}" for r in REORDERS for m in METHODS)
COLOURS = {"flash": style.BASELINE_GREY, "flex": style.PALETTE[5],
           "fixed": style.PALETTE[1], "greedy": style.PALETTE[2], "ilp": style.PALETTE[3]}
STUB_DECADES = 0.5


def systems() -> tuple[str, ...]:
    return (*BASELINES, *OURS)


def draw(logset: logs.LogSet, models: dict[str, tuple[str, ...]], device: str):
    cells = [(m, r) for m, resolutions in models.items() for r in resolutions]
    ncols = 3
    nrows = -(-len(cells) // ncols)
    fig, axes = style.new_figure(nrows, ncols, width=3.3 * ncols, row_height=2.6)
    table, summary, predictions = [], [], []
    for ax, (model, res) in zip(axes.flat, cells, strict=False):
        rows = {s: logset.expect(logs.Key(FIGURE, device, model, res, s)) for s in systems()}
        summary.append(_panel(ax, model, res, rows))
        table += [{"model": model, "px": res, "system": s, "status": r["status"],
                   "median us": logs.number(r, "median_us"),
                   "p20 us": r.get("p20_us"), "p80 us": r.get("p80_us"),
                   "predicted us": r.get("predicted_us"),
                   "reason": str(r.get("reason", ""))[:50]} for s, r in rows.items()]
        predictions += [_prediction(model, res, s, rows[s]) for s in OURS
                        if logs.is_number(rows[s].get("predicted_us"))
                        and rows[s]["status"] == "OK"]
    for ax in axes.flat[len(cells):]:
        ax.set_axis_off()
    handles = [Patch(facecolor=COLOURS["flash"], label=BASELINES["flash"]),
               Patch(facecolor=COLOURS["flex"], label=BASELINES["flex"])]
    handles += [Patch(facecolor=COLOURS[m], label=f"sparsevit, {m} schedule") for m in METHODS]
    fig.legend(handles=handles, loc="outside upper center", ncols=5)
    return fig, table, summary, predictions


def _panel(ax: Axes, model: str, res: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    median = {s: logs.number(r, "median_us") for s, r in rows.items()}
    found = [v for v in median.values() if logs.is_number(v) and v > 0]
    lo = 10 ** np.floor(np.log10(min(found, default=10.0)) - 0.6)
    hi = 10 ** np.ceil(np.log10(max(found, default=1e3)) + 0.3)
    x, ticks = [], []
    pos = 0.0
    for s in systems():
        if s == OURS[0]:
            pos += 0.6  # a gap between the baselines and ours
        x.append(pos)
        pos += 1.0 if s in BASELINES or s.endswith("ilp") else 0.85
        if s in BASELINES or s.endswith("greedy"):
            ticks.append((pos - 1.0, SHORT.get(s, s.split("-")[0])))
    for xi, s in zip(x, systems(), strict=True):
        value, row = median[s], rows[s]
        colour = COLOURS[s] if s in BASELINES else COLOURS[s.split("-")[1]]
        if not logs.is_number(value):
            style.sentinel_bar(ax, xi, 0.8, value, lo, lo * 10**STUB_DECADES,
                               lo * 10 ** (STUB_DECADES + 0.08))
            continue
        err = [[max(value - float(row.get("p20_us", value)), 0)],
               [max(float(row.get("p80_us", value)) - value, 0)]]
        ax.bar(xi, value - lo, 0.8, bottom=lo, color=colour, yerr=err, capsize=1,
               error_kw={"lw": 0.5, "capthick": 0.5})
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks], fontsize=6)
    ax.set_ylabel("median time (µs, log)")
    baselines = {s: median[s] for s in BASELINES}
    ilp = {s: median[s] for s in OURS if s.endswith("ilp") and logs.is_number(median[s])}
    best_ours = min(ilp, key=ilp.__getitem__) if ilp else None
    label = style.speedup_label(baselines, ilp[best_ours] if best_ours else "NS",
                                text="best of FA2 (dense), Flex / ours")
    ax.set_title(f"{model} {res} px\n{label}" + (f" ({best_ours})" if best_ours else ""))
    best_base = min((s for s, v in baselines.items() if logs.is_number(v)),
                    key=baselines.__getitem__, default=None)
    return {"model": model, "px": res, "best baseline": best_base or "-",
            "baseline us": baselines[best_base] if best_base else "NS",
            "ours": best_ours or "-", "ours us": ilp[best_ours] if best_ours else "NS",
            "speedup": label.rsplit("= ", 1)[1],
            **_ilp_vs_greedy(rows)}


def _ilp_vs_greedy(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over the reorders where both ran: ILP no worse than greedy (within greedy's p20-p80
    spread), and the worst ILP/greedy ratio."""
    ratios, within = [], []
    for r in REORDERS:
        ilp, greedy = rows[f"{r}-ilp"], rows[f"{r}-greedy"]
        if ilp["status"] == "OK" and greedy["status"] == "OK":
            ratios.append(ilp["median_us"] / greedy["median_us"])
            within.append(ilp["median_us"] <= greedy.get("p80_us", greedy["median_us"]))
    return {"ilp/greedy worst": max(ratios) if ratios else "NS",
            "ilp <= greedy": f"{sum(within)}/{len(within)}" if within else "NS"}


def _prediction(model: str, res: str, system: str, row: dict[str, Any]) -> dict[str, Any]:
    err = (row["predicted_us"] - row["median_us"]) / row["median_us"]
    return {"model": model, "px": res, "system": system, "predicted us": row["predicted_us"],
            "measured us": row["median_us"], "error": f"{100 * err:+.1f}%"}


def prediction_summary(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in METHODS:
        errs = [abs(p["predicted us"] - p["measured us"]) / p["measured us"]
                for p in predictions if p["system"].endswith(m)]
        if errs:
            out.append({"schedule": m, "cases": len(errs),
                        "mean |error|": f"{100 * float(np.mean(errs)):.1f}%",
                        "max |error|": f"{100 * max(errs):.1f}%"})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    inputs = logs.open_figure(argv, FIGURE, CELLS, __doc__.splitlines()[0])
    if inputs is None:
        return 2
    args, models, logset, device = inputs.args, inputs.models, inputs.logset, inputs.device
    inputs.warn_unplotted(FIGURE, systems())
    fig, table, summary, predictions = draw(logset, models, device)
    written = style.save(fig, args.out, FIGURE)
    style.print_table(summary, title=f"ablation ({device}): ours (best ILP) vs best baseline; "
                                     "ILP vs greedy per reorder")
    style.print_table(prediction_summary(predictions),
                      title="predicted makespan vs measured time")
    style.print_table(predictions, title="every schedule's prediction")
    style.print_table(table, title=f"ablation ({device}): every bar")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
