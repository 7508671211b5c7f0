"""One look for every figure: fonts, colours, sentinel marks, tables, atomic PDF + PNG.

Values handed to the drawing helpers are numbers or a sentinel status (OOM, NS, TLE,
FAIL); a sentinel is drawn as a labelled, hatched mark, never as a 0 bar.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from tabulate import tabulate

from logs import is_number

# Figures are built on matplotlib.figure.Figure (no pyplot state); Agg also keeps any
# pyplot use from looking for a display on CI and AE machines.
matplotlib.use("Agg")

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "axes.grid.axis": "y", "grid.alpha": 0.3,
    "axes.axisbelow": True, "savefig.dpi": 200, "savefig.bbox": "tight",
    "pdf.fonttype": 42, "hatch.linewidth": 0.6,  # 42: TrueType, as camera-ready asks
}
# Okabe-Ito: distinguishable with colour-blindness and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
BASELINE_GREY = "#8c8c8c"
SENTINEL_STYLE = {
    "OOM": {"hatch": "xxx", "color": "#b2182b"},
    "NS": {"hatch": "///", "color": "#7f7f7f"},
    "TLE": {"hatch": "...", "color": "#e08214"},
    "FAIL": {"hatch": "\\\\\\", "color": "#762a83"},
}
# No creation date in the PDF, so rerunning a plot on the same logs gives the same file.
_METADATA = {"pdf": {"CreationDate": None}, "png": {}}


def new_figure(nrows: int, ncols: int, width: float, row_height: float,
               **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure and its axes as a 2-D array (always 2-D)."""
    matplotlib.rcParams.update(RC)
    fig = Figure(figsize=(width, row_height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` and ``.png``, each via a temp file and a rename.

    (plot/ cannot import sparsevit.atomic: the quick-plot venv has no sparsevit.)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("pdf", "png"):
        # A per-process hidden name: concurrent plots cannot collide, and a killed one
        # leaves no half-written figure under the real name.
        tmp = out / f".{name}.{os.getpid()}.{ext}"
        try:
            fig.savefig(tmp, format=ext, metadata=_METADATA[ext])
            os.replace(tmp, out / f"{name}.{ext}")
        finally:
            tmp.unlink(missing_ok=True)
        written.append(out / f"{name}.{ext}")
    return written


def palette(names: Sequence[str], baseline: str | None = None) -> dict[str, str]:
    """A stable colour per name, in order; ``baseline`` (if among them) is grey."""
    colours = iter(PALETTE * (len(names) // len(PALETTE) + 1))
    return {n: BASELINE_GREY if n == baseline else next(colours) for n in names}


def legend_handles(colours: Mapping[str, str]) -> list[Patch]:
    return [Patch(facecolor=c, label=n) for n, c in colours.items()]


def mark_panel(ax: Axes, status: str) -> None:
    """Fill a whole panel (e.g. a heatmap that could not be drawn) with a sentinel mark."""
    style = SENTINEL_STYLE[status]
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=0,
                           hatch=style["hatch"], edgecolor=style["color"]))
    ax.text(0.5, 0.5, status, transform=ax.transAxes,
            ha="center", va="center", color=style["color"], weight="bold",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xticks([])
    ax.set_yticks([])


def bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float | str]],
         colours: Mapping[str, str], ylabel: str = "", ymax: float | None = None,
         fmt: str = "{:.3g}") -> None:
    """Grouped bars: one group per ``groups`` entry, one bar per series in each group.

    A sentinel value is a hatched stub labelled with the status. A value above ``ymax``
    is clipped to it and labelled with its number.
    """
    found = [v for values in series.values() for v in values if is_number(v)]
    top = ymax if ymax is not None else 1.12 * max(found, default=0.0) or 1.0  # 0..1 if empty
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        for xi, value in zip(x - 0.4 + width * (i + 0.5), values, strict=True):
            if is_number(value):
                ax.bar(xi, min(value, top), width, color=colours[name])
                if value > top:
                    ax.text(xi, top, fmt.format(value), rotation=90, ha="center", va="top",
                            fontsize=5, color="white")
            else:
                sentinel_bar(ax, xi, width, value, 0, 0.22 * top, 0.24 * top)
    ax.set_ylim(0, top)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)


def sentinel_bar(ax: Axes, x: float, width: float, status: str, bottom: float, top: float,
                 label_y: float) -> None:
    """A hatched stub from ``bottom`` to ``top`` at ``x``, with ``status`` written upward
    from ``label_y``: a sentinel in place of a bar."""
    style = SENTINEL_STYLE[status]
    ax.bar(x, top - bottom, width, bottom=bottom, fill=False, hatch=style["hatch"],
           edgecolor=style["color"], lw=0.5)
    ax.text(x, label_y, status, rotation=90, ha="center", va="bottom", fontsize=5,
            color=style["color"], weight="bold")


def speedup_label(baselines: Mapping[str, float | str], ours: float | str,
                  text: str = "best baseline / ours") -> str:
    """'best baseline / ours = 1.53x' (lower is better: the best baseline is the smallest
    number); 'n/a' when ours or every baseline is a sentinel."""
    numbers = [v for v in baselines.values() if is_number(v) and v > 0]
    if not numbers or not is_number(ours) or ours <= 0:
        return f"{text} = n/a"
    return f"{text} = {min(numbers) / ours:.2f}x"


def print_table(rows: Sequence[Mapping[str, Any]], title: str = "",
                floatfmt: str = ".4g") -> None:
    """Every plotted number, as a table on stdout (sentinels stay words).

    Floats are formatted here: tabulate leaves a column mixing numbers and sentinel
    words unformatted.
    """
    if title:
        print(f"\n{title}")
    shown = [{k: format(v, floatfmt) if isinstance(v, float) else v for k, v in row.items()}
             for row in rows]
    print(tabulate(shown, headers="keys", missingval="-", disable_numparse=True))


def finish(written: Sequence[Path], logset: Any) -> int:
    """The end of every figure script: where the files went, then the warning summary."""
    print("\nwrote " + ", ".join(str(p) for p in written))
    logset.print_warnings()
    return 0
