"""A thin MILP layer: one model in matrix form, solved by HiGHS or Gurobi.

The scheduler writes its model once as ``min c.x  s.t.  row_lo <= A x <= row_hi,
var_lo <= x <= var_hi, x_i integer where integrality[i]``. HiGHS (through
``scipy.optimize.milp``, always installed) is the default; Gurobi (``gurobipy``) runs
when asked for, or under ``solver="auto"`` when it imports. Gurobi reports licence
trouble only when it optimises (10009: licence expired or invalid, 10010: model too
large for the size-limited pip licence), so every Gurobi error there falls back to
HiGHS with a one-line notice on stderr, never a traceback.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sparsevit.errors import SparseVitError
from sparsevit.isolate import run_forked

SOLVERS = ("auto", "highs", "gurobi")
# HiGHS checks its time limit between phases only: its root cut loop alone can run for
# seconds over it. It therefore runs in a forked child that is killed at the limit plus
# this grace.
HIGHS_GRACE_S = 0.05


@dataclass(frozen=True)
class MilpProblem:
    c: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    var_lo: np.ndarray
    var_hi: np.ndarray
    integrality: np.ndarray  # 1: integer, 0: continuous


@dataclass(frozen=True)
class MilpResult:
    solver: str  # the solver that produced this result: "highs" or "gurobi"
    status: str  # optimal, time_limit, infeasible, error
    x: np.ndarray | None  # best solution found (None when there is none)
    objective: float | None
    bound: float | None  # best proven bound on the objective
    time_s: float

    @property
    def gap(self) -> float | None:
        if self.objective is None or self.bound is None:
            return None
        return abs(self.objective - self.bound) / max(abs(self.objective), 1e-12)


def solve(problem: MilpProblem, time_limit: float, solver: str = "auto") -> MilpResult:
    """Solve ``problem`` within ``time_limit`` seconds with ``solver`` (see SOLVERS)."""
    if solver not in SOLVERS:
        raise SparseVitError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if time_limit <= 0:
        raise SparseVitError(f"time limit must be positive, got {time_limit}")
    if solver in ("auto", "gurobi"):
        try:
            import gurobipy
        except ImportError:
            if solver == "gurobi":
                _notice("gurobipy is not installed; solving with HiGHS")
        else:
            try:
                return _solve_gurobi(gurobipy, problem, time_limit)
            except gurobipy.GurobiError as e:
                _notice(f"Gurobi failed (error {getattr(e, 'errno', '?')}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no message'}); "
                        "solving with HiGHS")
    return _solve_highs(problem, time_limit)


_NOTICED: set[str] = set()


def _notice(message: str) -> None:
    """One line on stderr, once per process: a solve runs several MILPs."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"sparsevit: notice: {message}", file=sys.stderr)


def _solve_highs(p: MilpProblem, time_limit: float) -> MilpResult:
    """HiGHS in a forked child, killed when it overruns ``time_limit``."""
    t0 = time.perf_counter()
    status, value = run_forked(_highs, (p, time_limit), time_limit + HIGHS_GRACE_S)
    if status == "ok":
        return value
    return MilpResult("highs", "time_limit" if status == "timeout" else "error", None, None,
                      None, time.perf_counter() - t0)


def _highs(p: MilpProblem, time_limit: float) -> MilpResult:
    from scipy.optimize import Bounds, LinearConstraint, milp

    t0 = time.perf_counter()
    res = milp(p.c, constraints=LinearConstraint(p.A, p.row_lo, p.row_hi),
               integrality=p.integrality, bounds=Bounds(p.var_lo, p.var_hi),
               options={"time_limit": float(time_limit), "disp": False})
    elapsed = time.perf_counter() - t0
    # scipy: 0 optimal, 1 iteration or time limit, 2 infeasible, 3 unbounded, 4 other.
    status = {0: "optimal", 1: "time_limit", 2: "infeasible"}.get(res.status, "error")
    x = None if res.x is None else np.asarray(res.x)
    bound = getattr(res, "mip_dual_bound", None)
    if status == "optimal" and res.fun is not None:
        bound = res.fun if bound is None or not np.isfinite(bound) else bound
    return MilpResult("highs", status, x, None if x is None else float(res.fun),
                      None if bound is None or not np.isfinite(bound) else float(bound),
                      elapsed)


def _solve_gurobi(gp, p: MilpProblem, time_limit: float) -> MilpResult:
    """The same model through gurobipy's matrix API; GurobiError propagates to the caller."""
    GRB = gp.GRB
    t0 = time.perf_counter()
    model = gp.Model()
    try:
        model.Params.OutputFlag = 0
        model.Params.TimeLimit = float(time_limit)
        vtype = np.where(p.integrality > 0, GRB.INTEGER, GRB.CONTINUOUS)
        x = model.addMVar(p.c.shape[0], lb=p.var_lo, ub=p.var_hi, obj=p.c, vtype=vtype)
        upper = np.isfinite(p.row_hi)
        lower = np.isfinite(p.row_lo)
        if upper.any():
            model.addConstr(p.A[upper] @ x <= p.row_hi[upper])
        if lower.any():
            model.addConstr(p.A[lower] @ x >= p.row_lo[lower])
        model.optimize()
        elapsed = time.perf_counter() - t0
        status = {GRB.OPTIMAL: "optimal", GRB.TIME_LIMIT: "time_limit",
                  GRB.INFEASIBLE: "infeasible"}.get(model.Status, "error")
        if model.SolCount == 0:
            return MilpResult("gurobi", status, None, None, None, elapsed)
        return MilpResult("gurobi", status, np.asarray(x.X), float(model.ObjVal),
                          float(model.ObjBound), elapsed)
    finally:
        model.dispose()
