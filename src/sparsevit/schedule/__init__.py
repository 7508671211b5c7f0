"""T4: schedule a reordered graph's work on the GPU from a T3 profile.

``solve(graph, profile, method, ...)`` returns a :class:`Schedule` that ``sv.plan(...,
schedule=...)`` and the kernel consume. Three methods:

* ``fixed``: one tile config for everything (64x64, 4 warps, 2 stages: the
  FlashAttention-like choice), the planner's default split of heavy rows, and the
  ordinary grid launch (one program per unit, longest first, the hardware places them);
* ``greedy``: the same config and split, placed by longest-processing-time-first onto
  n_SM x r persistent programs (r: the most programs per SM its resources allow);
* ``ilp``: chooses the config (tile shape, warps, stages), the occupancy r, the split of
  heavy rows, which groups of query blocks run in the dense vendor kernel instead of
  tiles (the dense rectangles of ``blocks.dense_spans``: DynamicViT's kept tokens), and
  the placement, minimising the predicted makespan. Every (config, r, split, dense)
  candidate gets a lower bound; candidates are expanded best bound first with LPT
  and then the exact arc-flow MILP placement (``model.arcflow``: HiGHS by default,
  Gurobi when asked for or licensed), until no unexpanded bound beats the incumbent or
  the time limit is reached. The same candidates launched as an ordinary grid (the
  hardware's dynamic dispatch, in the items' order) compete too; a static placement
  must win by GRID_MARGIN. The reported gap is against the smallest lower bound left
  (the load bound: mean load or longest unit), so it also counts the margin.

So each group of tiles gets one of two configurations: the vendor's dense kernel (for a
dense rectangle, when the profile predicts it cheaper) or the block-sparse config, which
is one per launch (a Triton kernel compiles one tile shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsevit import atomic
from sparsevit.errors import SparseVitError
from sparsevit.schedule import model, schema

METHODS = ("fixed", "greedy", "ilp")
FIXED_CONFIG = {"bm": 64, "bn": 64, "num_warps": 4, "num_stages": 2}
NO_DENSE = np.zeros((0, 4), np.int64)
DEFAULT_TIME_LIMIT = 1.0  # seconds of MILP time in one solve
# A static placement must beat the hardware's dynamic one (a grid launch, longest first)
# by this much of predicted time to be chosen: dispatch at run time absorbs the cost
# model's error, a fixed placement does not. (On an H200, VisionLongformer 1024 px,
# persistent LPT placements ran 6-9% slower than predicted, grid launches within -3..+8%.)
GRID_MARGIN = 0.10
_DTYPE_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
                "fp16": "fp16", "float16": "fp16", "torch.float16": "fp16"}


@dataclass
class Schedule:
    """Where each work unit runs; JSON-serialisable (``to_json`` / ``from_json``)."""

    method: str
    gpu: str
    software: dict[str, str]
    n_tokens: int
    nnz: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    config: dict[str, int]
    max_tiles: int
    n_items: int
    programs: dict[str, list[int]] | None
    predicted_us: float
    solver: dict[str, Any]
    lower_bound_us: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Dense rectangles [r0, r1, c0, c1] (positions) run by the vendor kernel; their query
    # blocks have no work items.
    dense: list[list[int]] = field(default_factory=list)
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The schedule as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        if path is not None:
            atomic.write_text(path, text)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> Schedule:
        """A validated schedule from a JSON file path or JSON text."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text()
            except FileNotFoundError:
                raise SparseVitError(f"{source}: no such schedule file") from None
            except (OSError, UnicodeDecodeError) as e:
                raise SparseVitError(f"{source}: unreadable ({type(e).__name__})") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise SparseVitError(f"schedule is not JSON ({e.msg})") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Schedule:
        validate(doc)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})

    def validate(self) -> None:
        validate(self.to_dict())

    def dense_spans(self) -> np.ndarray:
        """The dense rectangles as a (k, 4) int64 array (``planner.dense_blocks``)."""
        return np.asarray(self.dense, np.int64).reshape(-1, 4)


def validate(doc: Any) -> None:
    """Schema check, then what a schema cannot say: the programs place every unit once."""
    schema.check(doc)
    for r0, r1, c0, c1 in doc.get("dense", []):
        if not (r0 < r1 and c0 < c1):
            raise SparseVitError(f"schedule.dense: [{r0}, {r1}, {c0}, {c1}] is an empty "
                                 "rectangle")
    programs = doc["programs"]
    if programs is None:
        return
    ptr = np.asarray(programs["ptr"], dtype=np.int64)
    units = np.asarray(programs["units"], dtype=np.int64)
    n_units = doc["n_items"] * doc["batch"] * doc["heads"]
    if ptr[0] != 0 or ptr[-1] != units.shape[0] or np.any(np.diff(ptr) < 0):
        raise SparseVitError("schedule.programs.ptr must rise from 0 to len(units)")
    if units.shape[0] != n_units or not np.array_equal(np.sort(units), np.arange(n_units)):
        raise SparseVitError(f"schedule.programs.units must hold each of the {n_units} work "
                             "units (n_items * batch * heads) exactly once")


# ------------------------------------------------------------------------------ solve


@dataclass
class _Candidate:
    costs: model.Costs
    max_tiles: int
    n_programs: int
    items: Any
    lat_units: np.ndarray
    fixed_us: float  # launch + split-combine: everything outside the placement
    bound_us: float
    dense: np.ndarray  # rectangles given to the vendor kernel (its time is in fixed_us)
    placement: model.Placement | None = None
    grid: bool = False  # launched as an ordinary grid: the hardware places the units

    def predicted(self) -> float:
        if self.grid:
            return self.fixed_us + model.list_schedule(self.lat_units, self.n_programs)
        assert self.placement is not None
        return self.fixed_us + self.placement.makespan

    def programs(self) -> dict[str, list[int]] | None:
        return None if self.grid else _programs(self.placement)


def solve(graph: Any, profile: Any, method: str, *, batch: int, heads: int, head_dim: int,
          dtype: Any, time_limit: float = DEFAULT_TIME_LIMIT, solver: str = "auto",
          gpu: str | None = None, pad: str | bool = "auto",
          max_programs_per_sm: int | None = None,
          max_shared_bytes: int | None = None) -> Schedule:
    """Schedule ``graph`` (already reordered) with ``profile`` (a profile dict, a path, or
    None for this GPU's cached one). ``gpu`` (default: the visible GPU, else the profile's)
    must be the profile's GPU. ``max_programs_per_sm`` / ``max_shared_bytes`` tighten the
    per-SM resource limits (e.g. to leave room for a concurrent kernel).

    The returned Schedule also carries ``layout``, the ``planner.Layout`` of its tile
    shape (not serialised), so that ``sv.plan`` does not lay the tiles out again.
    """
    from sparsevit import planner
    from sparsevit import profile as profile_mod

    if method not in METHODS:
        raise SparseVitError(f"schedule method must be one of {METHODS}, got {method!r}")
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or value <= 0:
            raise SparseVitError(f"{name} must be a positive integer, got {value!r}")
    dtype_name = _DTYPE_NAMES.get(str(dtype))
    if dtype_name is None:
        raise SparseVitError(f"dtype must be bf16 or fp16, got {dtype}")
    if graph.nnz == 0:
        raise SparseVitError("the graph attends to nothing: there are no tiles to schedule")
    prof = profile_mod.load(profile, dtype_name, head_dim)
    _check_profile(prof, gpu, dtype_name, head_dim)
    n_sm = prof["sm_count"]
    n_bh = batch * heads
    all_costs = [c for c in profile_mod.costs(prof)
                 if (max_programs_per_sm is None or c.programs_per_sm <= max_programs_per_sm)]
    if max_shared_bytes is not None:
        fits = {(c["bm"], c["bn"], c["num_warps"], c["num_stages"])
                for c in prof["configs"] if c.get("shared_bytes", 0) <= max_shared_bytes}
        all_costs = [c for c in all_costs
                     if (c.bm, c.bn, c.num_warps, c.num_stages) in fits]
    if not all_costs:
        raise SparseVitError(
            f"no profiled config fits the resource limits (programs per SM <= "
            f"{max_programs_per_sm}, shared memory <= {max_shared_bytes} bytes)")
    layouts: dict[tuple[int, int], Any] = {}

    def layout_of(shape: tuple[int, int]) -> Any:
        if shape not in layouts:  # a census: only the chosen shape's bitmasks are built
            layouts[shape] = planner.tile_layout(graph, shape, pad, census=True)
        return layouts[shape]

    def tiles_of(shape: tuple[int, int]) -> Any:
        return layout_of(shape).tiles

    measured = prof.get("dense", [])  # dense-kernel timings, the vendor path among them
    at_occupancy = {(c.bm, c.bn, c.num_warps, c.num_stages, c.programs_per_sm): c
                    for c in profile_mod.costs(prof)}

    def candidate(c: model.Costs, max_tiles: int, vendor: np.ndarray = NO_DENSE) -> _Candidate:
        lay = layout_of((c.bm, c.bn))
        items = planner.make_work_items(lay.tiles, max_tiles, planner.idle_blocks(lay, vendor))
        # Fewer units than n_SM * r: the hardware spreads programs over the SMs first, so
        # an SM holds fewer than r busy programs, and they run at that occupancy's speed.
        busy = min(c.programs_per_sm, max(1, -(-int(items.qb.shape[0]) * n_bh // n_sm)))
        speed = at_occupancy.get((c.bm, c.bn, c.num_warps, c.num_stages, busy), c)
        lat_units = model.unit_latencies(speed.latency(items), n_bh)
        fixed = ((c.launch_us if lat_units.size else 0.0) + c.combine_us(items, n_bh, n_sm)
                 + model.rectangles_us(measured, vendor, n_bh).sum())
        p = n_sm * c.programs_per_sm
        # No work items at all (dense rectangles cover every block): nothing to place.
        return _Candidate(c, max_tiles, p, items, lat_units, fixed,
                          fixed + model.load_bound(lat_units, p), vendor,
                          grid=not lat_units.size)

    def dense_choices(c: model.Costs, max_tiles: int) -> list[np.ndarray]:
        """No rectangles, every one, and those whose vendor time is below their tiles'
        share of the block-sparse time (each rectangle judged on its own)."""
        shape = (c.bm, c.bn)
        if shape not in spans_of:  # a profile without vendor-path timings: tiles only
            spans_of[shape] = (planner.find_dense(tiles_of(shape), "auto") if dense_costed
                               else NO_DENSE)
        spans = spans_of[shape]
        if not spans.size:
            return [NO_DENSE]
        tiles = tiles_of(shape)
        items = planner.make_work_items(tiles, max_tiles, planner.idle_blocks(layout_of(shape)))
        per_block = np.bincount(items.qb, weights=c.latency(items),
                                minlength=tiles.n_query_blocks)
        share = [per_block[planner.dense_blocks(tiles, spans[i:i + 1])].sum() * n_bh
                 / (n_sm * c.programs_per_sm) for i in range(spans.shape[0])]
        cheaper = spans[model.rectangles_us(measured, spans, n_bh) < np.asarray(share)]
        choices = {spans[:0].tobytes(): spans[:0], spans.tobytes(): spans,
                   cheaper.tobytes(): cheaper}
        return list(choices.values())

    spans_of: dict[tuple[int, int], np.ndarray] = {}
    dense_costed = model.dense_us(measured, 1, 1, 1) is not None

    details: dict[str, Any] = {"sm_count": n_sm, "profile_date": prof.get("date")}
    if method in ("fixed", "greedy"):
        fixed = [c for c in all_costs if c.config == FIXED_CONFIG]
        if not fixed:
            raise SparseVitError(f"the profile has no {FIXED_CONFIG} config for the "
                                 f"{method} schedule (within the resource limits)")
        costs = max(fixed, key=lambda c: c.programs_per_sm)
        cand = candidate(costs, model.default_max_tiles(tiles_of((costs.bm, costs.bn))))
        t0 = time.perf_counter()
        if method == "fixed":
            cand.grid = True
            info = {"name": "none", "status": "grid launch (hardware placement)", "gap": None}
        else:
            cand.placement = model.lpt(cand.lat_units, cand.n_programs)
            info = {"name": "lpt", "status": "heuristic",
                    "gap": _gap(cand.predicted(), cand.bound_us)}
        details["launch"] = "grid" if cand.grid else "persistent"
        info.update(objective=cand.predicted(), time_s=time.perf_counter() - t0)
        chosen = _schedule(method, prof, graph, batch, heads, head_dim, dtype_name, cand,
                           cand.programs(), cand.predicted(), info, details)
    else:
        best, info = _solve_ilp(graph, all_costs, layout_of, candidate, dense_choices, n_bh,
                                n_sm, time_limit, solver, details, bounds_exact=pad is False)
        chosen = _schedule(method, prof, graph, batch, heads, head_dim, dtype_name, best,
                           best.programs(), best.predicted(), info, details)
    shape = (chosen.config["bm"], chosen.config["bn"])
    # The census decided whether to pad; the full layout is built once, the same way.
    chosen.layout = planner.tile_layout(graph, shape,
                                        layouts[shape].n_positions != graph.n_tokens)
    return chosen


def _solve_ilp(graph: Any, all_costs: list[model.Costs], layout_of: Any, candidate: Any,
               dense_choices: Any, n_bh: int, n_sm: int, time_limit: float, solver: str,
               details: dict[str, Any],
               bounds_exact: bool) -> tuple[_Candidate, dict[str, Any]]:
    """Best-bound search over (config, occupancy, split, dense rectangles); exact
    placement on the best.

    Tile layouts cost a pass over the graph each, so configs are first ranked by a bound
    from every shape's unpadded tile counts (one pass for all shapes: ``tiles_per_block``)
    and a shape is laid out only while its bound can beat the incumbent. (Padding can
    lower a shape's tile count below the unpadded one; for padded graphs this ranking is
    a heuristic, not a bound: then the pruned configs take no part in the reported lower
    bound, and the status says that the search was pruned heuristically.) The coarse
    bound knows nothing of dense rectangles or copied rows (``planner.copied_rows``: it
    counts their tiles), so once a candidate has either, no config is pruned by it.
    """
    from sparsevit import planner

    t0 = time.perf_counter()
    shapes = sorted({(c.bm, c.bn) for c in all_costs})
    per_block = model.tiles_per_block(graph.matrix, shapes)

    def coarse_bound(c: model.Costs) -> float:
        counts = per_block[(c.bm, c.bn)]
        cheapest = min(c.full_us, c.column_us, c.partial_us)
        work = c.unit_us * int((counts > 0).sum()) + cheapest * int(counts.sum())
        return c.launch_us + work * n_bh / (n_sm * c.programs_per_sm)

    cands: list[_Candidate] = []
    skipped: list[float] = []
    best: _Candidate | None = None
    prune = True
    for c in sorted(all_costs, key=coarse_bound):
        if prune and best is not None and coarse_bound(c) >= best.predicted():
            skipped.append(coarse_bound(c))
            continue
        lay = layout_of((c.bm, c.bn))
        for m in model.split_choices(lay.tiles):
            choices = dense_choices(c, m)
            prune = prune and (best is not None or len(choices) == 1)
            for vendor in choices:
                cand = candidate(c, m, vendor)
                prune = prune and not planner.copied_rows(lay, vendor).size
                cands.append(cand)
                if best is not None and cand.bound_us >= best.predicted():
                    continue
                cand.placement = model.lpt(cand.lat_units, cand.n_programs)
                if best is None or cand.predicted() < best.predicted():
                    best = cand
    assert best is not None
    expanded = [c for c in cands if c.placement is not None]
    # Exact placement (MILP), most promising candidates first, while they can still win.
    statuses, names, milp_s = [], set(), 0.0
    for cand in sorted(expanded, key=lambda c: c.predicted()):
        remaining = time_limit - milp_s
        if (cand.grid or remaining <= 0.05
                or cand.bound_us >= best.predicted() * (1 - 1e-6)):
            continue
        out = model.arcflow(cand.lat_units, cand.n_programs, cand.placement, remaining, solver)
        milp_s += out.time_s
        statuses.append(out.status)
        names.add(out.solver)
        cand.placement = out.placement
        if cand.predicted() < best.predicted():
            best = cand
    # The same candidates launched as a grid, at their config's highest occupancy.
    top_r: dict[tuple, int] = {}
    for c in expanded:
        key = (c.costs.bm, c.costs.bn, c.costs.num_warps, c.costs.num_stages)
        top_r[key] = max(top_r.get(key, 0), c.costs.programs_per_sm)
    grids = [dataclasses.replace(c, grid=True) for c in expanded
             if not c.grid and c.costs.programs_per_sm == top_r[
                 (c.costs.bm, c.costs.bn, c.costs.num_warps, c.costs.num_stages)]]
    best_grid = min(grids, key=lambda c: c.predicted(), default=None)
    if best_grid is not None and best_grid.predicted() <= best.predicted() * (1 + GRID_MARGIN):
        details["persistent_us"] = best.predicted()
        best = best_grid
    lower = min([c.bound_us for c in cands] + (skipped if bounds_exact else []))
    gap = _gap(best.predicted(), lower)
    if gap <= 1e-6:
        status = "optimal"
    elif statuses and all(s == "optimal" for s in statuses):
        status = "optimal placement (rounded latencies), gap vs load bound"
    else:
        status = "time_limit" if "time_limit" in statuses else "feasible"
    if skipped and not bounds_exact:
        status += f"; {len(skipped)} configs pruned by a heuristic bound (padded layouts)"
    details.update(launch="grid" if best.grid else "persistent",
                   candidates=len(cands), configs_skipped=len(skipped),
                   shapes_laid_out=len({(c.costs.bm, c.costs.bn) for c in cands}),
                   expanded=len(expanded), milp_solves=len(statuses), milp_s=round(milp_s, 3))
    return best, {"name": "+".join(sorted(names)) or "lpt", "status": status,
                  "objective": best.predicted(), "gap": gap,
                  "time_s": time.perf_counter() - t0}


def _gap(value: float, bound: float) -> float:
    return max(0.0, (value - bound) / value) if value > 0 else 0.0


def _programs(placement: model.Placement) -> dict[str, list[int]]:
    return {"ptr": placement.ptr.tolist(), "units": placement.units.tolist()}


def _check_profile(prof: dict[str, Any], gpu: str | None, dtype: str, head_dim: int) -> None:
    from sparsevit import profile as profile_mod

    target = gpu or profile_mod.current_gpu() or prof["gpu"]
    if target != prof["gpu"]:
        raise SparseVitError(f"the profile was measured on {prof['gpu']}, this is {target}: "
                             "profile this GPU (sparsevit profile)")
    if (prof["dtype"], prof["head_dim"]) != (dtype, head_dim):
        raise SparseVitError(f"the profile is for {prof['dtype']}, head_dim {prof['head_dim']}; "
                             f"this plan needs {dtype}, head_dim {head_dim}")
    ours = profile_mod.software().get("triton")
    if prof["software"].get("triton") != ours:
        raise SparseVitError(f"the profile was measured with triton "
                             f"{prof['software'].get('triton')}, this is triton {ours}: "
                             "kernels compile differently, profile again")


def _schedule(method: str, prof: dict[str, Any], graph: Any, batch: int, heads: int,
              head_dim: int, dtype: str, cand: _Candidate, programs: Any, predicted: float,
              info: dict[str, Any], details: dict[str, Any]) -> Schedule:
    c = cand.costs
    n_bh = batch * heads
    details.update(programs_per_sm=c.programs_per_sm, launch_us=c.launch_us,
                   split_blocks=int(cand.items.split_qb.shape[0]),
                   units=int(cand.lat_units.shape[0]),
                   dense_us=float(model.rectangles_us(prof.get("dense", []), cand.dense,
                                                      n_bh).sum()),
                   dense_alternative_us=model.dense_us(prof.get("dense", []), graph.n_tokens,
                                                       graph.n_tokens, n_bh))
    sched = Schedule(method, prof["gpu"], dict(prof["software"]), graph.n_tokens, graph.nnz,
                     batch, heads, head_dim, dtype,
                     {**c.config, "programs_per_sm": c.programs_per_sm}, int(cand.max_tiles),
                     int(cand.items.qb.shape[0]), programs, float(predicted),
                     {k: (float(v) if isinstance(v, (np.floating, float)) else v)
                      for k, v in info.items()},
                     float(cand.bound_us), details, cand.dense.tolist())
    sched.validate()
    return sched


# ------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from sparsevit.cli import add_graph_args

    p = subparsers.add_parser("schedule", help="T4: schedule a graph's work from a profile",
                              description=__doc__.split("\n\n", 1)[0])
    add_graph_args(p)
    p.add_argument("--reorder", help="token reordering (default: hilbert for a model's "
                   "grid, rcm for a mask without grid coordinates)")
    p.add_argument("--method", choices=METHODS, default="ilp")
    p.add_argument("--profile", help="profile JSON (default: this GPU's cached profile)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                   help="seconds of MILP time")
    p.add_argument("--solver", choices=("auto", "highs", "gurobi"), default="auto")
    p.add_argument("--output", help="write the schedule JSON here")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from sparsevit import reorder
    from sparsevit.cli import build_graph

    if args.time_limit <= 0:
        raise SparseVitError(f"--time-limit must be positive, got {args.time_limit}")
    t0 = time.perf_counter()
    graph = build_graph(args)
    t1 = time.perf_counter()
    method = args.reorder or ("hilbert" if graph.grid else "rcm")
    ordered = reorder.apply(graph, reorder.get(method)(graph))
    t2 = time.perf_counter()
    sched = solve(ordered, args.profile, args.method, batch=args.batch, heads=args.heads,
                  head_dim=args.head_dim, dtype=args.dtype, time_limit=args.time_limit,
                  solver=args.solver)
    t3 = time.perf_counter()
    if args.output:
        sched.to_json(args.output)
    cfg = sched.config
    row = {"tokens": sched.n_tokens, "method": sched.method,
           "config": f"{cfg['bm']}x{cfg['bn']} w{cfg['num_warps']} s{cfg['num_stages']}",
           "r/SM": cfg["programs_per_sm"], "max_tiles": sched.max_tiles,
           "items": sched.n_items,
           "programs": "grid" if sched.programs is None else len(sched.programs["ptr"]) - 1,
           "predicted us": sched.predicted_us, "bound us": sched.lower_bound_us,
           "solver": sched.solver["name"], "status": sched.solver["status"],
           "gap": sched.solver["gap"], "solve s": sched.solver["time_s"],
           "graph s": t1 - t0, "reorder s": t2 - t1, "schedule s": t3 - t2}
    print(tabulate([row], headers="keys", floatfmt=".4g"))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


__all__ = ["METHODS", "Schedule", "solve", "validate"]
