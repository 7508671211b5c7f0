"""The scheduling model: work units, their predicted cost, and three ways to place them.

A unit is (work item, batch*head): the kernel's program runs the item's full tiles, then
its partial tiles. On a config c (tile shape, warps, stages) running ``r`` programs per
SM, the profile (``sparsevit.profile``) predicts a unit's latency as

    lat = unit_us + full_us * n_full + column_us * n_column + partial_us * n_partial

and a schedule of P = n_SM * r persistent programs finishes at

    makespan = launch_us + max_p sum_{u in p} lat(u) + combine_us   (merging split rows)

* ``lpt``: longest processing time first onto the least loaded program (greedy);
* ``arcflow``: the exact assignment as a compact integer program. Units with the same
  (rounded) latency form one class, and a program is a path 0 -> load in a graph whose
  nodes are load levels and whose arcs add one unit of a class; flow = programs. Its
  size depends on the number of classes and levels, not on units x programs, and it has
  no program symmetry. The makespan is minimised by bisection over the capacity.
* ``list_schedule``: what the hardware does with an ordinary grid launch (each unit,
  in launch order, starts on the first free slot) -- the prediction for ``programs=None``.

Dense rectangles a schedule hands to the vendor kernel (``planner.dense_blocks``) cost
``dense_us`` each, added to the makespan: the vendor kernel fills every SM, so it runs
after the block-sparse launch rather than beside it (measured on an H200, DynamicViT).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sparsevit.blocks import TileSet, occupied_cells
from sparsevit.graph import Adjacency
from sparsevit.planner import WorkItems
from sparsevit.schedule import solvers

LEVELS = 120  # load levels of the arc-flow graph: latency resolution ~0.8% of the makespan
MAX_CLASSES = 12


@dataclass(frozen=True)
class Costs:
    """Predicted costs (µs) of one kernel config at one occupancy, from a profile."""

    bm: int
    bn: int
    num_warps: int
    num_stages: int
    programs_per_sm: int
    launch_us: float
    unit_us: float
    full_us: float
    column_us: float
    partial_us: float
    combine_launch_us: float
    combine_wave_us: float
    combine_chunk_us: float

    @property
    def config(self) -> dict[str, int]:
        return {"bm": self.bm, "bn": self.bn, "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    def latency(self, items: WorkItems) -> np.ndarray:
        """Predicted latency of each item's unit (one batch*head)."""
        return (self.unit_us + self.full_us * (items.tmid - items.t0)
                + self.column_us * (items.tcol - items.tmid)
                + self.partial_us * (items.t1 - items.tcol))

    def combine_us(self, items: WorkItems, n_bh: int, n_sm: int) -> float:
        """Merging split rows (each split block's last piece merges its pieces), fitted as
        a fixed cost plus, per wave of split blocks, a fixed cost and its chunks."""
        n_split = int(items.split_qb.shape[0])
        if not n_split:
            return 0.0
        chunks = float((items.split_s1 - items.split_s0).max())
        waves = math.ceil(n_split * n_bh / n_sm)
        return self.combine_launch_us + waves * (self.combine_wave_us
                                                 + self.combine_chunk_us * chunks)


VENDOR_PATH = "vendor_path"  # the profile's measurements of a plan's dense rectangles


def dense_us(measured: list[dict], rows: int, keys: int, n_bh: int) -> float | None:
    """Predicted µs of one dense rectangle of ``rows`` x ``keys`` for ``n_bh`` batch*heads,
    from the profile's VENDOR_PATH measurements (``sv.attention`` on all-dense graphs, so
    the gathers and the side stream are in): linear in rows * keys * batch*heads between
    the measured sizes, the smallest's time below them (fixed costs dominate there) and
    proportional above them. None when the profile has no such measurement."""
    points = sorted((d["tokens"] ** 2 * d["heads"], d["us"]) for d in measured
                    if d.get("backend") == VENDOR_PATH and d.get("status") == "OK")
    if not points:
        return None
    work = rows * keys * n_bh
    sizes, times = zip(*points, strict=True)
    if work > sizes[-1]:
        return times[-1] * work / sizes[-1]
    return float(np.interp(work, sizes, times))


def rectangles_us(measured: list[dict], spans: np.ndarray, n_bh: int) -> np.ndarray:
    """``dense_us`` of each rectangle [r0, r1, c0, c1] of ``spans`` (a profile with
    rectangles to price must have VENDOR_PATH measurements)."""
    return np.array([dense_us(measured, r1 - r0, c1 - c0, n_bh)
                     for r0, r1, c0, c1 in spans.tolist()], dtype=float)


# ------------------------------------------------------------------------- work items


def tiles_per_block(adjacency: Adjacency,
                    shapes: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """Non-empty tiles per query block for every shape, from one pass over the nonzeros
    (no padding, no tile contents): what the search uses to rank tile shapes cheaply.

    Nonzeros are counted in cells of (gcd of the heights) x (gcd of the widths); a tile
    of any shape is a union of cells and is non-empty when one of them is.
    """
    n = adjacency.shape[0]
    ch = math.gcd(*(bm for bm, _ in shapes))
    cw = math.gcd(*(bn for _, bn in shapes))
    n_cc = -(-n // cw)
    ids = occupied_cells(adjacency, ch, cw)
    cell_r, cell_c = ids // n_cc, ids % n_cc
    out = {}
    for bm, bn in shapes:
        n_kb = -(-n // bn)
        tile = np.unique((cell_r // (bm // ch)) * n_kb + cell_c // (bn // cw))
        out[(bm, bn)] = np.bincount(tile // n_kb, minlength=-(-n // bm))
    return out


def default_max_tiles(tiles: TileSet) -> int:
    """The planner's default cut of heavy query blocks (``make_work_items``)."""
    counts = np.diff(tiles.row_ptr)
    busy = counts[counts > 0]
    return max(8, 2 * math.ceil(busy.mean())) if busy.size else 8


def split_choices(tiles: TileSet) -> list[int]:
    """Candidate ``max_tiles``: the planner's default, half and double it, and no split."""
    d = default_max_tiles(tiles)
    top = max(int(np.diff(tiles.row_ptr).max(initial=1)), 1)
    return sorted({max(2, d // 2), d, min(2 * d, top), max(top, d)})


# ------------------------------------------------------------------------- placements


@dataclass
class Placement:
    """Units (``item * n_bh + bh``) per program: program p runs units[ptr[p]:ptr[p+1]]."""

    ptr: np.ndarray
    units: np.ndarray
    loads: np.ndarray  # predicted busy time of each program (µs, launch excluded)

    @property
    def makespan(self) -> float:
        return float(self.loads.max()) if self.loads.size else 0.0


def unit_latencies(lat_items: np.ndarray, n_bh: int) -> np.ndarray:
    return np.repeat(lat_items, n_bh)


def load_bound(lat_units: np.ndarray, n_programs: int) -> float:
    """No placement finishes before the mean load or the longest unit."""
    return max(float(lat_units.sum()) / n_programs, float(lat_units.max(initial=0.0)))


def lpt(lat_units: np.ndarray, n_programs: int) -> Placement:
    """Longest processing time first: each unit, longest first, to the least loaded program."""
    order = np.argsort(-lat_units, kind="stable")
    heap = [(0.0, p) for p in range(n_programs)]
    owner = np.empty(order.shape[0], dtype=np.int64)
    for i, u in enumerate(order.tolist()):
        load, p = heap[0]
        heapq.heapreplace(heap, (load + float(lat_units[u]), p))
        owner[i] = p
    return _placement(order, owner, lat_units, n_programs)


def _placement(units: np.ndarray, owner: np.ndarray, lat_units: np.ndarray,
               n_programs: int) -> Placement:
    """Group ``units`` by their program, keeping their order inside each program."""
    by_program = np.argsort(owner, kind="stable")
    ptr = np.zeros(n_programs + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_programs), out=ptr[1:])
    loads = np.bincount(owner, weights=lat_units[units], minlength=n_programs)
    return Placement(ptr, units[by_program], loads)


def list_schedule(lat_units: np.ndarray, n_slots: int) -> float:
    """Makespan of launching units in order onto ``n_slots`` slots, each unit starting on
    the first slot to free up (the GPU's block scheduler on an ordinary grid)."""
    if lat_units.shape[0] <= n_slots:
        return float(lat_units.max(initial=0.0))
    free = lat_units[:n_slots].tolist()
    heapq.heapify(free)
    for lat in lat_units[n_slots:].tolist():
        heapq.heapreplace(free, free[0] + lat)
    return max(free)


@dataclass(frozen=True)
class IlpOutcome:
    placement: Placement
    solver: str
    status: str
    lower_bound: float  # µs: the load bound (mean load, longest unit)
    time_s: float
    improved: bool  # False when the greedy incumbent was kept


def arcflow(lat_units: np.ndarray, n_programs: int, incumbent: Placement, time_limit: float,
            solver: str = "auto") -> IlpOutcome:
    """The exact placement of units on ``n_programs`` programs, as an arc-flow MILP.

    Latencies are rounded to a grid of ``incumbent.makespan / LEVELS`` so that a unit
    class is a set of units of equal grid latency. Capacity C is feasible when the flow
    of ``n_programs`` paths from 0, each ending at a level <= C and using exactly n_j
    arcs of class j, exists; bisection between the load bound and the incumbent's
    makespan finds the least feasible C. Arcs of class j leave only levels reachable
    with classes 1..j (classes by decreasing latency): any path can be sorted so, which
    removes the order symmetry. The result is re-evaluated with exact latencies and
    replaces the incumbent only when it is better.
    """
    t_start = time.perf_counter()
    grid = max(incumbent.makespan, 1e-9) / LEVELS
    w_units = np.maximum(1, np.rint(lat_units / grid)).astype(np.int64)
    # Too many distinct latencies would bloat the model: coarsen the grid until it fits.
    while np.unique(w_units).shape[0] > MAX_CLASSES:
        grid *= 1.5
        w_units = np.maximum(1, np.rint(lat_units / grid)).astype(np.int64)
    weights, cls_of, counts = np.unique(-w_units, return_inverse=True, return_counts=True)
    weights = -weights  # classes by decreasing latency
    lo = max(math.ceil(int(w_units.sum()) / n_programs), int(weights[0]))
    hi = _grid_makespan(incumbent, w_units)
    best_flow: tuple[int, np.ndarray, list] | None = None
    status, used = "optimal", "highs"
    while lo < hi:
        remaining = time_limit - (time.perf_counter() - t_start)
        if remaining <= 0.01:
            status = "time_limit"
            break
        mid = (lo + hi) // 2
        problem, arcs = _arcflow_problem(weights, counts, n_programs, mid)
        result = solvers.solve(problem, remaining, solver)
        used = result.solver
        if result.x is not None:
            hi = mid
            best_flow = (mid, np.rint(result.x).astype(np.int64), arcs)
        elif result.status == "infeasible":
            lo = mid + 1
        else:  # out of time with no answer for this capacity: the bound stays unproven
            status = "time_limit"
            break
    elapsed = time.perf_counter() - t_start
    # The bisection proves bounds for rounded latencies only: report the exact load bound.
    lower = load_bound(lat_units, n_programs)
    if best_flow is not None:
        placement = _decode(best_flow[1], best_flow[2], cls_of, weights.shape[0],
                            lat_units, n_programs)
        if placement.makespan < incumbent.makespan:
            return IlpOutcome(placement, used, status, lower, elapsed, True)
    return IlpOutcome(incumbent, used, status, lower, elapsed, False)


def _grid_makespan(placement: Placement, w_units: np.ndarray) -> int:
    owner = np.repeat(np.arange(placement.ptr.shape[0] - 1), np.diff(placement.ptr))
    return int(np.bincount(owner, weights=w_units[placement.units]).max())


def _arcflow_problem(weights: np.ndarray, counts: np.ndarray, n_programs: int,
                     cap: int) -> tuple[solvers.MilpProblem, list]:
    """Feasibility of capacity ``cap``: variables are class arcs, then one end arc per level.

    Rows: flow out of level 0 = n_programs; at every other level in = out;
    per class, its arcs carry exactly n_j units.
    """
    reach = np.zeros(cap + 1, dtype=bool)
    reach[0] = True
    tails, heads, classes = [], [], []
    for j, (w, n_j) in enumerate(zip(weights.tolist(), counts.tolist(), strict=True)):
        grown = reach.copy()  # levels reachable with classes 0..j
        for k in range(1, min(n_j, cap // w) + 1):
            grown[k * w:] |= reach[: cap + 1 - k * w]
        tail = np.flatnonzero(grown[: cap + 1 - w])
        tails.append(tail)
        heads.append(tail + w)
        classes.append(np.full(tail.shape[0], j))
        reach = grown
    tail = np.concatenate(tails)
    head = np.concatenate(heads)
    cls = np.concatenate(classes)
    reach[head] = True  # a head one unit past a class's count is still a level
    levels = np.flatnonzero(reach)
    n_arcs, n_levels = tail.shape[0], levels.shape[0]
    level_row = np.full(cap + 1, -1, dtype=np.int64)
    level_row[levels] = np.arange(n_levels)
    # Flow rows: +out -in at each level (row of level 0 = programs, others = 0).
    arc_idx = np.arange(n_arcs)
    end_idx = n_arcs + np.arange(n_levels)
    rows = np.concatenate([level_row[tail], level_row[head], np.arange(n_levels),
                           n_levels + cls])
    cols = np.concatenate([arc_idx, arc_idx, end_idx, arc_idx])
    vals = np.concatenate([np.ones(n_arcs), -np.ones(n_arcs), np.ones(n_levels),
                           np.ones(n_arcs)])
    n_rows = n_levels + weights.shape[0]
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_arcs + n_levels))
    rhs = np.concatenate([[n_programs], np.zeros(n_levels - 1), counts]).astype(float)
    var_hi = np.concatenate([counts[cls], np.full(n_levels, n_programs)]).astype(float)
    problem = solvers.MilpProblem(np.zeros(n_arcs + n_levels), A, rhs, rhs,
                                  np.zeros(n_arcs + n_levels), var_hi,
                                  np.ones(n_arcs + n_levels))
    return problem, [tail, head, cls, levels]


def _decode(x: np.ndarray, arcs: list, cls_of: np.ndarray, n_classes: int,
            lat_units: np.ndarray, n_programs: int) -> Placement:
    """Split the flow into n_programs paths; hand each path's class slots real units."""
    tail, head, cls, levels = arcs
    n_arcs = tail.shape[0]
    flow = x[:n_arcs].copy()
    ends = dict(zip(levels.tolist(), x[n_arcs:].tolist(), strict=True))
    out_arcs: dict[int, list[int]] = {}
    for a in np.flatnonzero(flow).tolist():
        out_arcs.setdefault(int(tail[a]), []).append(a)
    # Units of each class, longest first within the class.
    pools = [list(np.flatnonzero(cls_of == j)[::-1]) for j in range(n_classes)]
    for j in range(n_classes):
        pools[j].sort(key=lambda u: lat_units[u])
    owner = np.full(lat_units.shape[0], -1, dtype=np.int64)
    for p in range(n_programs):
        level = 0
        while ends.get(level, 0) == 0:
            arcs_here = out_arcs.get(level, [])
            while arcs_here and flow[arcs_here[-1]] == 0:
                arcs_here.pop()
            if not arcs_here:  # flow conservation guarantees an arc or an end here
                raise RuntimeError("arc-flow solution does not decompose into paths")
            a = arcs_here[-1]
            flow[a] -= 1
            owner[pools[int(cls[a])].pop()] = p
            level = int(head[a])
        ends[level] -= 1
    if (owner < 0).any():
        raise RuntimeError("arc-flow solution leaves units unplaced")
    order = np.argsort(-lat_units, kind="stable")
    return _placement(order, owner[order], lat_units, n_programs)
