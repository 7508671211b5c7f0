"""Declarative experiments: a TOML file of defaults and sweeps, expanded into cells.

A file (``ae/characterize/configs/<figure>.toml``)::

    figure = "rq1"
    kind = "model"                  # "model": whole-ViT pipeline cells; "ladder": attention
    description = "..."
    [defaults]                      # every setting of a cell, see SCHEMAS
    resolution = 224
    [[sweep]]                       # list values are axes: the cartesian product is swept
    patch = [8, 16, 32]
    depth = [6, 12]

Several ``[[sweep]]`` tables add up (union of their products). ``--set key=value``
overrides a setting in every cell; a JSON list value (``--set batch=[1,8]``) makes it an
axis. Every setting is checked against the schema of the kind: a typo is an error, not
a silently ignored key.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsevit.errors import SparseVitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parents[3] / "ae" / "characterize" / "configs"

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune")
PIPELINES = ("sync", "async")
PREPROCESS = ("none", "cpu", "gpu")
NUMA = ("none", "local", "remote")
DTYPES = ("bf16", "fp16", "fp32")
LADDER_GRAPHS = ("ViT", "VisionLongformer", "RegionViT", "DynamicViT")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _choice(*allowed: str):
    def check(value: Any) -> bool:
        return value in allowed

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def _string(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _scale(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# setting -> validator; a cell must give every key of its kind's schema.
SCHEMAS: dict[str, dict[str, Any]] = {
    "model": {
        "model": _string,  # "vit" (patch/depth/dim below) or a sparsevit.models name
        "patch": _positive, "depth": _positive, "dim": _positive,
        "resolution": _positive, "attn": _string, "batch": _positive,
        "dtype": _choice(*DTYPES), "compile": _choice(*COMPILE_MODES),
        "pipeline": _choice(*PIPELINES), "queue_depth": _positive,
        "preprocess": _choice(*PREPROCESS), "raw_scale": _scale,
        "numa": _choice(*NUMA), "warmup": _non_negative, "iters": _positive,
        "profile": _bool, "profile_iters": _positive, "nsys": _bool, "seed": _non_negative,
    },
    "ladder": {
        "graph": _choice(*LADDER_GRAPHS), "patch": _positive, "resolution": _positive,
        "method": _string, "batch": _positive, "heads": _positive, "head_dim": _positive,
        "dtype": _choice("bf16", "fp16"), "reorder": _string, "tile": _string,
        "seed": _non_negative,
    },
}
# Settings that name the model (the log's <model> part) or its resolution; every other
# setting that varies across an experiment's cells goes into the <system> part.
IDENTITY = {"model": ("model", "patch", "depth", "dim"), "ladder": ("graph", "patch")}
# How a varying setting reads in a cell name: prefix + value ("" = the value alone).
SLUG_PREFIX = {"batch": "b", "queue_depth": "q", "preprocess": "pre", "numa": "numa",
               "raw_scale": "raw", "warmup": "w", "iters": "n", "profile_iters": "pn",
               "seed": "s", "heads": "h", "head_dim": "d"}


@dataclass(frozen=True)
class Cell:
    """One benchmark cell: its resolved settings and the parts of its log name."""

    figure: str
    kind: str
    settings: dict[str, Any]
    model: str
    resolution: str
    system: str

    @property
    def cell_id(self) -> str:
        """'<model>-<resolution>-<system>' ([A-Za-z0-9_+-] only; split with maxsplit 2)."""
        return f"{self.model}-{self.resolution}-{self.system}"


@dataclass(frozen=True)
class Experiment:
    figure: str
    kind: str
    description: str
    cells: tuple[Cell, ...]
    source: Path

    def select(self, ids: list[str] | None) -> list[Cell]:
        """The cells named by ``ids`` (all when None/empty); an unknown id is an error."""
        if not ids:
            return list(self.cells)
        by_id = {c.cell_id: c for c in self.cells}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise SparseVitError(f"{self.figure}: unknown cell(s) {', '.join(unknown)}; "
                                 f"list them with 'sparsevit characterize cells {self.figure}'")
        return [by_id[i] for i in dict.fromkeys(ids)]


def available() -> list[str]:
    """Names of the shipped experiment configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def config_path(name: str | Path) -> Path:
    """A shipped config by figure name, or a path to any TOML file."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise SparseVitError(f"{path}: no such config file")
        return path
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        raise SparseVitError(f"unknown experiment {name!r}; choose from: "
                             f"{', '.join(available())} (or give a .toml path)")
    return path


def parse_override(item: str) -> tuple[str, Any]:
    """'batch=8' -> ('batch', 8); 'batch=[1,8]' -> ('batch', [1, 8]); bare words stay text."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SparseVitError(f"--set must look like name=value, got {item!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip(), value


def load(name: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, expand and validate an experiment; ``overrides`` are 'key=value' strings."""
    path = config_path(name)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SparseVitError(f"{path}: invalid TOML ({e})") from None
    kind = doc.get("kind", "model")
    if kind not in SCHEMAS:
        raise SparseVitError(f"{path}: kind must be one of {', '.join(SCHEMAS)}, got {kind!r}")
    figure = doc.get("figure", path.stem)
    unknown = set(doc) - {"figure", "kind", "description", "defaults", "sweep"}
    if unknown:
        raise SparseVitError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    defaults = doc.get("defaults", {})
    sweeps = doc.get("sweep", [{}]) or [{}]
    forced = dict(parse_override(o) for o in overrides or [])
    raw: list[dict[str, Any]] = []
    for sweep in sweeps:
        raw += expand({**defaults, **sweep, **forced})
    for settings in raw:
        validate(settings, kind, path)
    return Experiment(figure, kind, doc.get("description", ""),
                      tuple(name_cells(figure, kind, raw, path)), path)


def expand(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of every list-valued setting (in the order given)."""
    axes = [k for k, v in settings.items() if isinstance(v, list)]
    for key in axes:
        if not settings[key]:
            raise SparseVitError(f"setting {key!r} sweeps an empty list")
    out = []
    for values in itertools.product(*(settings[k] for k in axes)):
        out.append({**settings, **dict(zip(axes, values, strict=True))})
    return out


def validate(settings: dict[str, Any], kind: str, source: Path | str) -> None:
    schema = SCHEMAS[kind]
    unknown = sorted(set(settings) - set(schema))
    if unknown:
        raise SparseVitError(f"{source}: unknown setting(s) {', '.join(unknown)} for a "
                             f"{kind} experiment; known: {', '.join(schema)}")
    missing = [k for k in schema if k not in settings]
    if missing:
        raise SparseVitError(f"{source}: setting(s) {', '.join(missing)} not given")
    for key, check in schema.items():
        if not check(settings[key]):
            allowed = getattr(check, "allowed", None)
            hint = f" (one of {', '.join(allowed)})" if allowed else ""
            raise SparseVitError(f"{source}: bad {key} = {settings[key]!r}{hint}")


def model_label(kind: str, settings: dict[str, Any]) -> str:
    """The <model> part of a cell name: the seed's vit{patch}x{depth}x{dim} naming for
    plain ViTs, the model name otherwise; ladder graphs carry their patch size."""
    if kind == "ladder":
        return f"{settings['graph']}_p{settings['patch']}"
    if settings["model"] == "vit":
        return f"vit{settings['patch']}x{settings['depth']}x{settings['dim']}"
    # 'ViT-B/16' -> 'ViT-B16': log names and cell ids allow [A-Za-z0-9_+-] only.
    return "".join(ch for ch in str(settings["model"]) if ch in _ID_CHARS)


def _slug(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key if value else f"no{key}"
    text = str(value).replace(".", "p")
    return SLUG_PREFIX.get(key, "") + text


def name_cells(figure: str, kind: str, raw: list[dict[str, Any]],
               source: Path | str) -> list[Cell]:
    """Cells with their log-name parts; settings that vary (beyond the model and the
    resolution) make up the <system> part, so every cell's name is unique."""
    identity = IDENTITY[kind]
    keys = [k for k in SCHEMAS[kind] if k not in identity and k != "resolution"]
    varying = [k for k in keys if len({json.dumps(s[k]) for s in raw}) > 1]
    cells: dict[str, Cell] = {}
    for settings in raw:
        system = "_".join(_slug(k, settings[k]) for k in varying) or "base"
        cell = Cell(figure, kind, settings, model_label(kind, settings),
                    str(settings["resolution"]), system)
        bad = set(cell.cell_id) - set(_ID_CHARS)
        if bad:
            raise SparseVitError(f"{source}: cell name {cell.cell_id!r} has characters "
                                 f"{''.join(sorted(bad))!r} (allowed: letters, digits, _ + -)")
        if cell.cell_id in cells and cells[cell.cell_id].settings != settings:
            raise SparseVitError(f"{source}: two different cells are both named {cell.cell_id}")
        cells[cell.cell_id] = cell
    return list(cells.values())


_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-"
