"""``make check``: do fresh logs reproduce the backup logs, claim by claim?

Each claim of ``ae/claims.json`` names a figure, a RESULT field (``metric``), which rows
count (``rows``: field values to match; ``exclude_systems``; ``only``: allowed values of
name parts, e.g. resolutions), how cells group (``per``: name parts such as model and
resolution) and reduce (``reduce``: min, max, median, or one for a single value), and a
relative ``tolerance``. With ``relative_to`` (a backend name) a row's value is its metric
over the same metric of that backend's log of the same model, resolution and run mode
(the log whose name has the row's backend swapped for it): ratios come from the logs as
they stand, not from a ratio a log wrote against an older run of the other backend. Per
group it prints the backup value, the fresh value and fresh / backup; the claim's
verdict is

- reproduced: every group of the backup logs has a fresh value within the tolerance;
- differs: some group is outside it (or its cell is OOM/TLE/FAIL now): listed;
- missing: some group has no fresh value (cell not run, NS), or there is no backup value.

Only reads logs (plot/logs.py's parser): runs without torch, in the plotting venv.

    python -m sparsevit.kit.check [--results results/<date>] [--backup backup_logs]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from tabulate import tabulate

from sparsevit.errors import SparseVitError
from sparsevit.kit.cells import find_root

REDUCERS = {"min": min, "max": max, "median": statistics.median}
NAME_PARTS = ("device", "model", "resolution", "system")
VERDICTS = ("reproduced", "differs", "missing")
MAX_ROWS = 24  # a longer per-claim table shows only the groups that are not ok


@dataclass
class Claim:
    id: str
    claim: str
    figure: str
    metric: str
    tolerance: float
    per: tuple[str, ...]
    reduce: str = "one"
    rows: dict[str, Any] = field(default_factory=dict)
    exclude_systems: tuple[str, ...] = ()
    only: dict[str, list[str]] = field(default_factory=dict)
    relative_to: str | None = None
    why: str = ""


@dataclass
class Judged:
    claim: Claim
    verdict: str
    table: list[list[Any]]
    differs: list[str]
    missing: list[str]
    notes: list[str]


def load_plot_logs(root: Path) -> ModuleType:
    """plot/logs.py, the one log parser of the kit (plot/ is not a package)."""
    path = root / "plot" / "logs.py"
    spec = importlib.util.spec_from_file_location("sparsevit_plot_logs", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise SparseVitError(f"{path} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def load_claims(path: Path) -> list[Claim]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SparseVitError(f"{path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims", []), list):
        raise SparseVitError(f'{path}: the top level must be {{"claims": [...]}}')
    claims = []
    for i, item in enumerate(doc.get("claims", [])):
        if not isinstance(item, dict):
            raise SparseVitError(f"{path}: claim {i} must be an object, got {item!r}")
        try:
            c = Claim(**{**item, "per": tuple(item["per"]),
                         "exclude_systems": tuple(item.get("exclude_systems", ()))})
        except KeyError as e:
            raise SparseVitError(f"{path}: claim {i} has no {e} field") from None
        except TypeError as e:
            raise SparseVitError(f"{path}: claim {i}: {e}") from None
        bad = [p for p in c.per if p not in NAME_PARTS]
        if bad or c.reduce not in (*REDUCERS, "one") or not c.tolerance > 0:
            raise SparseVitError(f"{path}: claim {c.id}: 'per' takes {NAME_PARTS}, 'reduce' "
                                 f"one of {(*REDUCERS, 'one')}, 'tolerance' > 0")
        if not isinstance(c.only, dict) or any(
                p not in NAME_PARTS or not isinstance(v, list) for p, v in c.only.items()):
            raise SparseVitError(f"{path}: claim {c.id}: 'only' maps name parts {NAME_PARTS} "
                                 "to lists of values")
        if c.relative_to is not None and not (isinstance(c.relative_to, str) and c.relative_to):
            raise SparseVitError(f"{path}: claim {c.id}: 'relative_to' must name a backend")
        claims.append(c)
    if not claims:
        raise SparseVitError(f"{path}: no claims")
    return claims


def claim_values(logs: ModuleType, logset: Any, device: str,
                 claim: Claim) -> dict[tuple[str, ...], float | str]:
    """{group: reduced value, or a sentinel status when no row of the group has a value
    (a row's own status, or with ``relative_to`` its sibling's; OOM, TLE or FAIL before
    NS, so that a failure reads as one and not as a cell that did not run)."""
    numbers: dict[tuple[str, ...], list[float]] = {}
    sentinels: dict[tuple[str, ...], str] = {}
    for key, cell in logset.cells.items():
        if key.figure != claim.figure or key.device != device:
            continue
        if key.system in claim.exclude_systems or any(
                getattr(key, part) not in values for part, values in claim.only.items()):
            continue
        group = tuple(getattr(key, part) for part in claim.per)
        for row in cell.rows:
            if any(row.get(k) != v for k, v in claim.rows.items()):
                continue
            value = logs.number(row, claim.metric)
            if claim.relative_to is not None and isinstance(value, float):
                value = _over_sibling(logs, logset, key, row, value, claim)
            if isinstance(value, float):
                numbers.setdefault(group, []).append(value)
            elif value != "NS" or group not in sentinels:
                sentinels[group] = value
    out: dict[tuple[str, ...], float | str] = dict(sentinels)
    for group, values in numbers.items():
        out[group] = values[0] if claim.reduce == "one" else REDUCERS[claim.reduce](values)
    return out


def _over_sibling(logs: ModuleType, logset: Any, key: Any, row: dict[str, Any], value: float,
                  claim: Claim) -> float | str:
    """``value`` over the metric of backend ``claim.relative_to`` in the cell whose name
    differs from ``key`` only by that backend: the log name is the row's backend (attn)
    or the backend and a ``-`` suffix (e2e: ``full-b1-eager``). NS where there is none."""
    backend = str(row.get("backend", ""))
    suffix = key.system[len(backend):]
    if not backend or not key.system.startswith(backend) or suffix[:1] not in ("", "-"):
        return "NS"
    sibling = logset.cells.get(replace(key, system=claim.relative_to + suffix))
    rows = [r for r in sibling.rows if r.get("backend") == claim.relative_to] if sibling else []
    base = logs.number(rows[0], claim.metric) if rows else "NS"
    if not isinstance(base, float):
        return base
    return value / base if base > 0 else "NS"


def judge(claim: Claim, backup: dict[tuple[str, ...], float | str],
          fresh: dict[tuple[str, ...], float | str]) -> Judged:
    table, differs, missing, notes = [], [], [], []
    for group in sorted(backup, key=lambda g: [_natural(p) for p in g]):
        old, new = backup[group], fresh.get(group, "NS")
        name = "/".join(group)
        if not isinstance(old, float):
            notes.append(f"{name}: backup is {old}, not judged")
            continue
        if not isinstance(new, float):
            ratio, mark = "-", "missing" if new == "NS" else f"DIFFERS ({new})"
            (missing if new == "NS" else differs).append(f"{name} ({new})")
        else:
            ratio = new / old if old else float("inf")
            ok = abs(ratio - 1) <= claim.tolerance
            mark = "ok" if ok else "DIFFERS"
            if not ok:
                differs.append(f"{name} ({ratio:.3f}x)")
        table.append([*group, _fmt(old), _fmt(new), _fmt(ratio), mark])
    for group in sorted(set(fresh) - set(backup)):
        notes.append(f"{'/'.join(group)}: fresh only, not judged")
    if differs:
        verdict = "differs"
    elif missing or not table:
        verdict = "missing"
        if not table:
            notes.append("no backup value to compare with")
    else:
        verdict = "reproduced"
    return Judged(claim, verdict, table, differs, missing, notes)


def _fmt(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else value


def _names(items: Sequence[str], limit: int = 8) -> str:
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _natural(value: str) -> tuple[float, str]:
    return (int(value), "") if value.isdigit() else (float("inf"), value)


def newest_results(root: Path) -> Path:
    runs = sorted(p for p in (root / "results").glob("*") if p.is_dir() and p.name[0] != ".")
    if not runs:
        raise SparseVitError(f"no results under {root / 'results'}: run make full-run first, "
                             "or give --results")
    return runs[-1]


def check(root: Path, results: Path, backup: Path, claims: Sequence[Claim],
          device: str | None = None) -> list[Judged]:
    logs = load_plot_logs(root)
    judged = []
    for claim in claims:
        sets = {}
        notes = []
        for side, base in (("backup", backup), ("fresh", results)):
            directory = base / claim.figure
            try:
                logset = logs.load_dir(directory, figure=claim.figure)
            except FileNotFoundError:
                logset = logs.LogSet()
                notes.append(f"{side}: no directory {directory}")
            dev = logs.pick_device(logset, device)
            notes += [f"{side}: {w}" for w in logset.warnings if "not a <figure>" not in w]
            runner = [k.model for k in logset.cells if k.system == "runner"]
            if runner:
                notes.append(f"{side}: cells the runner logged FAIL/TLE: {', '.join(runner)}")
            sets[side] = (claim_values(logs, logset, dev, claim), dev)
        result = judge(claim, sets["backup"][0], sets["fresh"][0])
        if sets["backup"][1] != sets["fresh"][1]:
            notes.append(f"devices differ: backup {sets['backup'][1]}, fresh {sets['fresh'][1]}")
        result.notes = notes + result.notes
        judged.append(result)
    return judged


def report(judged: Sequence[Judged]) -> None:
    for j in judged:
        c = j.claim
        print(f"\n== {c.id} ({c.figure}): {c.claim}")
        print(f"   {c.metric}, {c.reduce} per {'/'.join(c.per)}, tolerance ±{c.tolerance:.0%}"
              + (f" ({c.why})" if c.why else ""))
        shown = j.table if len(j.table) <= MAX_ROWS else [r for r in j.table if r[-1] != "ok"]
        if shown:
            print(tabulate(shown, headers=[*c.per, "backup", "fresh", "fresh/backup", ""],
                           disable_numparse=True))
        if len(shown) < len(j.table):
            print(f"   ({len(j.table) - len(shown)} more groups within tolerance not shown)")
        for note in j.notes:
            print(f"   note: {note}")
        print(f"   verdict: {j.verdict.upper()}"
              + (f"; differs: {_names(j.differs)}" if j.differs else "")
              + (f"; missing: {_names(j.missing)}" if j.missing else ""))
    print()
    print(tabulate([[j.claim.id, j.claim.figure, f"±{j.claim.tolerance:.0%}", len(j.table),
                     len(j.differs), len(j.missing), j.verdict] for j in judged],
                   headers=["claim", "figure", "tolerance", "cells", "differ", "missing",
                            "verdict"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsevit check", description=__doc__.split("\n")[0])
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SparseVitError as e:
        print(f"sparsevit check: error: {e}", file=sys.stderr)
        return 2


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path,
                   help="fresh results root holding <figure>/ (default: newest results/*)")
    p.add_argument("--backup", type=Path, help="backup logs root (default: backup_logs)")
    p.add_argument("--claims", type=Path, help="claims file (default: ae/claims.json)")
    p.add_argument("--device", help="device tag of the logs to compare (default: most)")
    p.add_argument("--root", type=Path, help="the kit checkout (default: found from here)")


def run(args: argparse.Namespace) -> int:
    root = (args.root or find_root()).resolve()
    results = args.results or newest_results(root)
    backup = args.backup or root / "backup_logs"
    for what, path in (("results", results), ("backup", backup)):
        if not path.is_dir():
            raise SparseVitError(f"{what} directory {path} does not exist")
    claims = load_claims(args.claims or root / "ae" / "claims.json")
    print(f"fresh: {results}\nbackup: {backup}")
    judged = check(root, results, backup, claims, args.device)
    report(judged)
    return 0 if all(j.verdict == "reproduced" for j in judged) else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("check", help="compare fresh logs with backup_logs per claim",
                              description=__doc__.split("\n\n")[0])
    add_args(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
