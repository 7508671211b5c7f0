"""The figure convention: ``ae/<fig>/cells.sh`` prints the figure's cell ids, one a line;
``ae/<fig>/run_single.sh <cell> <results_dir>`` runs exactly that cell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sparsevit.errors import SparseVitError

CELL_RE = re.compile(r"^[A-Za-z0-9_+-]+$")


def find_root(start: Path | None = None) -> Path:
    """The kit's checkout: the nearest directory holding ``ae/`` above ``start`` (default:
    the working directory), else the one this package was loaded from."""
    here = (start or Path.cwd()).resolve()
    for path in (here, *here.parents, *Path(__file__).resolve().parents):
        if (path / "ae").is_dir() and (path / "Makefile").is_file():
            return path
    raise SparseVitError("no ae/ directory found: run from the sparsevit checkout or give --root")


def script_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a figure's scripts: this interpreter (``$PYTHON``) and this
    checkout's package on PYTHONPATH, installed or not."""
    env = {**os.environ, **(extra or {}), "PYTHON": sys.executable}
    src = str(root / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def figures(root: Path) -> list[str]:
    """Every figure that follows the convention (has ``ae/<fig>/cells.sh``), sorted."""
    return sorted(p.parent.name for p in (root / "ae").glob("*/cells.sh"))


def list_cells(root: Path, figure: str) -> list[str]:
    """The cell ids ``ae/<figure>/cells.sh`` prints, checked: non-empty, valid, unique."""
    script = root / "ae" / figure / "cells.sh"
    if not script.is_file():
        raise SparseVitError(f"ae/{figure}/cells.sh not found; figures with cells: "
                             f"{', '.join(figures(root)) or 'none'}")
    if not (root / "ae" / figure / "run_single.sh").is_file():
        raise SparseVitError(f"ae/{figure}/run_single.sh not found")
    try:
        proc = subprocess.run(["bash", str(script)], cwd=root, env=script_env(root),
                              capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        raise SparseVitError(f"ae/{figure}/cells.sh ran over 300 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SparseVitError(f"ae/{figure}/cells.sh failed (exit {proc.returncode}): {last}")
    cells = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    bad = [c for c in cells if not CELL_RE.match(c)]
    if bad:
        raise SparseVitError(f"ae/{figure}/cells.sh: cell id(s) {', '.join(map(repr, bad[:3]))} "
                             "use characters outside [A-Za-z0-9_+-]")
    dups = sorted({c for c in cells if cells.count(c) > 1})
    if dups:
        raise SparseVitError(f"ae/{figure}/cells.sh lists {', '.join(dups)} more than once")
    if not cells:
        raise SparseVitError(f"ae/{figure}/cells.sh printed no cell")
    return cells
