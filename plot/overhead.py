"""Overhead figure: preprocessing time against one inference (logs of ``sparsevit overhead``).

    python plot/overhead.py --log-dir backup_logs/overhead --out figures/overhead

One panel per model: for each resolution, one bar per per-graph stage (build the graph,
reorder, solve the schedule, extract the tiles), the one-off GPU profile and one
inference of the scheduled kernel, in ms on a log axis. Tables per
model and resolution: every stage, the inference, the best dense baseline, and the
number of inferences after which the saving pays for the preprocessing (without and
with the one-off profile).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

import logs
import style

FIGURE = "overhead"
CELLS = Path(__file__).resolve().parent.parent / "ae" / "overhead" / "cells.txt"
SYSTEM = "sparsevit"
STAGES = ("graph_s", "reorder_s", "solve_s", "extract_s")
NAMES = {"graph_s": "graph (T1)", "reorder_s": "reorder (T2)", "solve_s": "solve (T4)",
         "extract_s": "extract tiles (T2)", "profile_s": "profile (T3, once per GPU)",
         "inference": "one inference"}
COLOURS = dict(zip((*STAGES, "profile_s", "inference"), style.PALETTE, strict=False))


def draw(logset: logs.LogSet, models: dict[str, tuple[str, ...]], device: str):
    fig, axes = style.new_figure(1, len(models), width=3.3 * len(models), row_height=3.0)
    table = []
    for ax, (model, resolutions) in zip(axes.flat, models.items(), strict=True):
        ax.set_yscale("log")
        x = np.arange(len(resolutions))
        for xi, res in zip(x, resolutions, strict=True):
            row = logset.expect(logs.Key(FIGURE, device, model, res, SYSTEM))
            table.append(_table_row(model, res, row))
            if row["status"] != "OK" or "stages" not in row:
                style.sentinel_bar(ax, xi, 0.8, row["status"] if row["status"] != "OK"
                                   else "NS", 1e-3, 1e-2, 1.2e-2)
                continue
            ms = {s: 1e3 * float(row["stages"][s]) for s in (*STAGES, "profile_s")}
            ms["inference"] = row["median_us"] / 1e3
            width = 0.8 / len(ms)
            for i, (name, value) in enumerate(ms.items()):
                ax.bar(xi - 0.4 + width * (i + 0.5), value, width, color=COLOURS[name])
            n = row.get("inferences_to_amortise")
            ax.text(xi, 3 * max(ms.values()), "amortised after\n" +
                    (f"{n:,.0f} inferences" if logs.is_number(n) else "never (no saving)"),
                    ha="center", va="bottom", fontsize=5)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 300)  # room for the amortisation notes inside the axes
        ax.set_xticks(x, [f"{r} px" for r in resolutions])
        ax.set_ylabel("time (ms, log)")
        ax.set_title(model)
    handles = [Patch(facecolor=COLOURS[k], label=NAMES[k]) for k in COLOURS]
    fig.legend(handles=handles, loc="outside upper center", ncols=3)
    return fig, table


def _table_row(model: str, res: str, row: dict[str, Any]) -> dict[str, Any]:
    stages = row.get("stages", {})
    out: dict[str, Any] = {"model": model, "px": res, "status": row["status"]}
    out.update({NAMES[s]: stages.get(s) for s in (*STAGES, "profile_s")})
    out.update({"inference us": logs.number(row, "median_us"),
                "best dense baseline": row.get("best_baseline", "-"),
                "baseline us": row.get("best_baseline_us"),
                "inferences to amortise": row.get("inferences_to_amortise", "never"),
                "with profile": row.get("inferences_to_amortise_with_profile", "never")})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    inputs = logs.open_figure(argv, FIGURE, CELLS, __doc__.splitlines()[0])
    if inputs is None:
        return 2
    args, models, logset, device = inputs.args, inputs.models, inputs.logset, inputs.device
    inputs.warn_unplotted(FIGURE, (SYSTEM,))
    fig, table = draw(logset, models, device)
    written = style.save(fig, args.out, FIGURE)
    for model in models:
        style.print_table([r for r in table if r["model"] == model],
                          title=f"overhead ({device}): {model} (stage times in s)")
    return style.finish(written, logset)


if __name__ == "__main__":
    sys.exit(main())
