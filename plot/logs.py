"""Read a directory of cell logs (format: src/sparsevit/celllog.py) for plotting.

Runs in the quick-plot venv, which holds only numpy, matplotlib and tabulate: nothing
in plot/ may import torch, scipy or sparsevit.

Stray files never stop a plot: a file with a foreign name, an unreadable or empty file,
a RESULT line with bad JSON or an unknown status is skipped with a warning. Hidden
entries (the kit runner's ``.kit`` state, ``.gitkeep``) are skipped silently. Warnings
are collected on the LogSet and printed once, as a summary, by ``print_warnings``.

The kit runner writes ``<figure>.<device>.<cell>.cell.runner.log`` for a cell that
crashed or ran over its time limit; the summary names those cells and their status.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

STATUSES = ("OK", "OOM", "NS", "TLE", "FAIL")
SENTINELS = STATUSES[1:]
RUNNER_SYSTEM = "runner"  # system part of the kit runner's logs of failed cells

NAME_RE = re.compile(r"^([^./]+)\.([^./]+)\.([^./]+)\.([^./]+)\.([^./]+)\.log$")
HEADER_RE = re.compile(r"^# ([^:]+): ?(.*)$")
RESULT_RE = re.compile(r"^\s*RESULT\s+(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Key:
    """The identity of a cell, as spelled in its file name."""

    figure: str
    device: str
    model: str
    resolution: str
    system: str

    def __str__(self) -> str:
        return ".".join(astuple(self))


@dataclass
class Cell:
    key: Key
    path: Path
    header: dict[str, str]
    rows: list[dict[str, Any]]


def natural_key(value: str) -> tuple[float, str]:
    """Sort '448' < '2048' numerically, anything else after, alphabetically."""
    return (int(value), "") if value.isdigit() else (float("inf"), value)


@dataclass
class LogSet:
    cells: dict[Key, Cell] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def values(self, part: str) -> list[str]:
        """Distinct values of one name part ('device', 'model', ...), naturally sorted."""
        return sorted({getattr(k, part) for k in self.cells}, key=natural_key)

    def expect(self, key: Key, **match: Any) -> dict[str, Any]:
        """The first RESULT row of cell ``key`` whose fields equal ``match``.

        A plot asks only for cells it expects, so a missing log or row comes back as an
        NS row (drawn as NS, never as 0) and leaves a warning.
        """
        cell = self.cells.get(key)
        if cell is None:
            self.warn(f"missing cell {key}: drawn as NS")
            return {"status": "NS", "reason": "no log"}
        for row in cell.rows:
            if all(row.get(k) == v for k, v in match.items()):
                return row
        wanted = ", ".join(f"{k}={v}" for k, v in match.items())
        self.warn(f"{cell.path.name}: no RESULT row with {wanted}: drawn as NS")
        return {"status": "NS", "reason": f"no row {wanted}"}

    def warn_unplotted(self, expected: set[Key]) -> None:
        """Warn about each cell of the plotted device that is not in ``expected``."""
        devices = {k.device for k in expected}
        for key in sorted(set(self.cells) - expected, key=str):
            if key.system == RUNNER_SYSTEM:
                row = self.cells[key].rows[0]
                self.warn(f"cell {key.model}: {row['status']} in the kit runner "
                          f"({row.get('reason', 'no reason given')})")
            elif key.device in devices:
                self.warn(f"{self.cells[key].path.name}: not a cell of this figure, not plotted")

    def print_warnings(self, file: TextIO | None = None) -> None:
        """Print the collected warnings once (later calls print only new ones)."""
        if not self.warnings:
            return
        out = file or sys.stderr
        print(f"{len(self.warnings)} warning(s):", file=out)
        for message in self.warnings:
            print(f"  - {message}", file=out)
        self.warnings.clear()


def read_cells(path: Path) -> dict[str, tuple[str, ...]]:
    """{model: resolutions} from a cells file: 'model patch res res ...' lines, # comments."""
    models = {}
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            if words:
                raise ValueError(f"{path}: want 'model patch resolution...', got {line!r}")
            continue
        models[words[0]] = tuple(words[2:])
    return models


def pick_device(logset: LogSet, wanted: str | None) -> str:
    """``wanted``, else the device with the most cells (warning when there are several)."""
    devices = logset.values("device")
    if wanted or not devices:
        return wanted or "cpu"
    counts = {d: sum(k.device == d for k in logset.cells) for d in devices}
    device = max(devices, key=counts.__getitem__)
    if len(devices) > 1:
        logset.warn(f"logs from several devices ({', '.join(devices)}): plotting {device}; "
                    "choose with --device")
    return device


def parse_text(text: str) -> tuple[dict[str, str], list[dict[str, Any]], list[str]]:
    """Header, valid RESULT rows and problems of one log's text."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break  # the header is the leading comment block only
        m = HEADER_RE.match(line)
        if m:
            header[m.group(1).strip()] = m.group(2)
    rows, problems = [], []
    for m in RESULT_RE.finditer(text):
        try:
            row = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            problems.append(f"bad RESULT JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"RESULT is a JSON {type(row).__name__}, not an object")
            continue
        if row.get("status") not in STATUSES:
            problems.append(f"RESULT status {row.get('status')!r} is not one of {STATUSES}")
            continue
        rows.append(row)
    return header, rows, problems


def load_dir(log_dir: str | Path, figure: str | None = None) -> LogSet:
    """Every cell log directly in ``log_dir`` (of ``figure`` only, when given).

    Raises FileNotFoundError when ``log_dir`` is not a directory: a mistyped path must
    not turn into a figure of NS marks.
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log directory {log_dir} does not exist")
    logs = LogSet()
    for path in sorted(log_dir.iterdir()):
        if path.name.startswith("."):
            continue
        m = NAME_RE.match(path.name)
        if not m or not path.is_file():
            logs.warn(f"{path.name}: not a <figure>.<device>.<model>.<resolution>.<system>.log "
                      "file, skipped")
            continue
        key = Key(*m.groups())
        if figure is not None and key.figure != figure:
            continue
        cell = _read_cell(key, path, logs)
        if cell is not None:
            logs.cells[key] = cell
    return logs


def _read_cell(key: Key, path: Path, logs: LogSet) -> Cell | None:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        logs.warn(f"{path.name}: unreadable ({type(e).__name__}), skipped")
        return None
    header, rows, problems = parse_text(text)
    for problem in problems:
        logs.warn(f"{path.name}: {problem}, line skipped")
    if not rows:
        logs.warn(f"{path.name}: {'empty file' if not text.strip() else 'no RESULT row'}, "
                  "skipped")
        return None
    return Cell(key, path, header, rows)


def decode_array(row: dict[str, Any]) -> np.ndarray:
    """The array a RESULT row carries as ``data`` (zlib + base64), ``dtype`` and ``shape``.

    Raises ValueError on anything malformed, so a caller can warn and mark the cell.
    """
    try:
        if row["encoding"] != "zlib+base64":
            raise ValueError(f"unknown encoding {row['encoding']!r}")
        raw = zlib.decompress(base64.b64decode(row["data"], validate=True))
        return np.frombuffer(raw, dtype=np.dtype(row["dtype"])).reshape(row["shape"])
    except (KeyError, TypeError, zlib.error, ValueError) as e:
        raise ValueError(f"undecodable array ({type(e).__name__}: {e})") from None


def number(row: dict[str, Any], name: str) -> float | str:
    """Field ``name`` of a RESULT row as a float, or the row's sentinel status (NS for
    an OK row without that number), ready for the style helpers."""
    if row["status"] != "OK":
        return row["status"]
    value = row.get(name)
    return float(value) if is_number(value) else "NS"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class FigureInputs:
    """What every figure script starts from: its arguments, cells, logs and device."""

    args: argparse.Namespace
    models: dict[str, tuple[str, ...]]
    logset: LogSet
    device: str

    def warn_unplotted(self, figure: str, systems: Sequence[str]) -> None:
        """Warn about every log that is not one of (model, resolution, system) plotted."""
        self.logset.warn_unplotted({Key(figure, self.device, model, res, system)
                                    for model, resolutions in self.models.items()
                                    for res in resolutions for system in systems})


def open_figure(argv: Sequence[str] | None, figure: str, cells: Path,
                description: str) -> FigureInputs | None:
    """Parse the common figure CLI (--log-dir, --out, --device, --cells) and load the logs.

    None (after a one-line error) when the log directory or cells file can't be read.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--log-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", help="device tag of the logs to plot (default: most)")
    parser.add_argument("--cells", type=Path, default=cells,
                        help="models and resolutions of the figure (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        models = read_cells(args.cells)
        logset = load_dir(args.log_dir, figure=figure)
    except (OSError, ValueError) as e:
        print(f"plot/{figure}.py: error: {e}", file=sys.stderr)
        return None
    return FigureInputs(args, models, logset, pick_device(logset, args.device))
