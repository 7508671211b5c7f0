"""The MILP layer: HiGHS on small problems with a known optimum, Gurobi's fallback."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from sparsevit.errors import SparseVitError
from sparsevit.schedule import solvers


def knapsack() -> solvers.MilpProblem:
    """max 5a + 4b + 3c  s.t. 2a + 3b + c <= 5, 4a + b + 2c <= 11, 3a + 4b + 2c <= 8,
    integers >= 0: optimum a=2, b=0, c=1 (value 13), as a minimisation."""
    A = sp.csr_matrix(np.array([[2, 3, 1], [4, 1, 2], [3, 4, 2]], float))
    return solvers.MilpProblem(np.array([-5.0, -4.0, -3.0]), A, np.full(3, -np.inf),
                               np.array([5.0, 11.0, 8.0]), np.zeros(3), np.full(3, np.inf),
                               np.ones(3))


def test_highs_finds_the_known_optimum():
    res = solvers.solve(knapsack(), time_limit=10, solver="highs")
    assert res.solver == "highs" and res.status == "optimal"
    assert res.objective == pytest.approx(-13.0)
    np.testing.assert_allclose(res.x, [2, 0, 1], atol=1e-6)
    assert res.gap == pytest.approx(0.0, abs=1e-6)


def test_highs_reports_infeasible():
    p = knapsack()
    infeasible = solvers.MilpProblem(p.c, p.A, np.array([6.0, -np.inf, -np.inf]), p.row_hi,
                                     p.var_lo, p.var_hi, p.integrality)
    res = solvers.solve(infeasible, time_limit=10, solver="highs")
    assert res.status == "infeasible" and res.x is None


def test_bad_solver_and_time_limit():
    with pytest.raises(SparseVitError, match="solver must be"):
        solvers.solve(knapsack(), 1, solver="cplex")
    with pytest.raises(SparseVitError, match="time limit"):
        solvers.solve(knapsack(), 0)


class _FakeGurobiError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def _fake_gurobipy(errno: int) -> types.ModuleType:
    """A gurobipy whose optimize() fails like a size-limited or expired licence."""
    mod = types.ModuleType("gurobipy")
    mod.GurobiError = _FakeGurobiError
    mod.GRB = types.SimpleNamespace(INTEGER="I", CONTINUOUS="C", OPTIMAL=2, TIME_LIMIT=9,
                                    INFEASIBLE=3)

    class Model:
        def __init__(self):
            self.Params = types.SimpleNamespace()

        def addMVar(self, *a, **k):  # noqa: N802 (gurobipy's names)
            return types.SimpleNamespace(X=None)

        def addConstr(self, *a, **k):  # noqa: N802
            pass

        def optimize(self):
            raise _FakeGurobiError(errno, {10010: "Model too large for size-limited license",
                                           10009: "License expired 2025-01-01"}[errno])

        def dispose(self):
            pass

    mod.Model = Model
    return mod


@pytest.mark.parametrize("errno", [10009, 10010])
@pytest.mark.parametrize("requested", ["gurobi", "auto"])
def test_gurobi_error_at_optimize_falls_back_to_highs(monkeypatch, capsys, errno, requested):
    monkeypatch.setitem(sys.modules, "gurobipy", _fake_gurobipy(errno))
    monkeypatch.setattr(solvers, "_NOTICED", set())
    p = knapsack()
    # addConstr receives A @ x: give the fake MVar a matmul that returns anything.
    monkeypatch.setattr(sp.csr_matrix, "__matmul__", lambda self, other: 0, raising=False)
    for _ in range(2):  # a second failure in the same process adds no second notice
        res = solvers.solve(p, time_limit=10, solver=requested)
        assert res.solver == "highs" and res.objective == pytest.approx(-13.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error {errno}" in err[0] and "HiGHS" in err[0]


def test_gurobi_requested_but_absent_falls_back(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gurobipy", None)  # import raises ImportError
    monkeypatch.setattr(solvers, "_NOTICED", set())
    res = solvers.solve(knapsack(), time_limit=10, solver="gurobi")
    assert res.solver == "highs"
    assert "not installed" in capsys.readouterr().err


def test_gurobi_solves_when_licensed():
    gp = pytest.importorskip("gurobipy")
    try:
        res = solvers._solve_gurobi(gp, knapsack(), 10)
    except gp.GurobiError as e:  # installed without a usable licence
        pytest.skip(f"gurobipy has no licence here ({e})")
    assert res.solver == "gurobi" and res.objective == pytest.approx(-13.0)


def test_real_gurobi_beyond_its_licence_falls_back_or_solves(capsys):
    """With the size-limited licence pip's gurobipy carries, a 2,500-variable model fails
    at optimize() (error 10010) and HiGHS takes over; a full licence solves it."""
    pytest.importorskip("gurobipy")
    solvers._NOTICED.clear()
    n = 2500
    A = sp.csr_matrix(np.ones((1, n)))
    p = solvers.MilpProblem(np.arange(n, dtype=float) % 7 + 1, A, np.array([3.0]),
                            np.array([3.0]), np.zeros(n), np.ones(n), np.ones(n))
    res = solvers.solve(p, time_limit=20, solver="auto")
    assert res.objective == pytest.approx(3.0)  # three of the cost-1 variables
    err = capsys.readouterr().err
    assert res.solver == "gurobi" or ("error 10010" in err and res.solver == "highs")
