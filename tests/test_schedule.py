"""sparsevit.schedule: solve() from the recorded GPU profile, the schedule JSON and its
schema, the planner consuming it (kernel in the Triton interpreter), and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsevit as sv
from sparsevit import profile as profile_mod
from sparsevit import reorder, schedule
from sparsevit.baselines import reference
from sparsevit.errors import SparseVitError
from sparsevit.schedule import model

FIXTURE = next(iter(sorted((Path(__file__).parent / "fixtures").glob("profile_*.json"))))
SHAPE = {"batch": 1, "heads": 2, "head_dim": 64, "dtype": "bf16"}


@pytest.fixture(scope="module")
def prof() -> dict:
    return profile_mod.load(FIXTURE)


@pytest.fixture(scope="module")
def ordered():
    g = sv.masks.vision_longformer((20, 20), window=7, n_global=1)
    return reorder.apply(g, reorder.get("hilbert")(g))


@pytest.fixture(scope="module")
def solved(prof, ordered) -> dict[str, schedule.Schedule]:
    out = {m: schedule.solve(ordered, prof, m, time_limit=2.0, **SHAPE)
           for m in schedule.METHODS}
    # The ILP's own placement, with the grid launch ruled out (a negative margin).
    margin, schedule.GRID_MARGIN = schedule.GRID_MARGIN, -1.0
    try:
        out["ilp-persistent"] = schedule.solve(ordered, prof, "ilp", time_limit=2.0, **SHAPE)
    finally:
        schedule.GRID_MARGIN = margin
    return out


def test_the_fixture_is_a_real_gpu_profile(prof):
    assert "H100" in prof["gpu"] or "H200" in prof["gpu"]
    assert prof["sm_count"] >= 100 and prof["configs"]
    for c in prof["configs"]:
        assert c["n_regs"] > 0 and c["max_programs_per_sm"] >= 1
        for f in c["fits"]:
            assert f["full_us"] > 0 and len(f["points"]) == 12


def test_methods_and_their_choices(solved, ordered):
    fixed, greedy, ilp, placed = (solved[m] for m in (*schedule.METHODS, "ilp-persistent"))
    assert fixed.programs is None and fixed.details["launch"] == "grid"
    for s in (fixed, greedy):
        assert {k: s.config[k] for k in schedule.FIXED_CONFIG} == schedule.FIXED_CONFIG
    assert placed.details["launch"] == "persistent"
    n_units = placed.n_items * SHAPE["heads"]
    assert sorted(placed.programs["units"]) == list(range(n_units))
    # The ILP searches a superset of greedy's and fixed's choices with the same cost model
    # (it takes a grid launch only within GRID_MARGIN of its best placement).
    assert placed.predicted_us <= greedy.predicted_us * (1 + 1e-9)
    assert ilp.predicted_us <= min(fixed.predicted_us, placed.predicted_us * (
        1 + schedule.GRID_MARGIN)) * (1 + 1e-9)
    assert (ilp.programs is None) == (ilp.details["launch"] == "grid")
    assert ilp.lower_bound_us <= ilp.predicted_us
    assert 0.0 <= ilp.solver["gap"] < 1.0
    assert ilp.solver["time_s"] > 0 and ilp.solver["objective"] == pytest.approx(ilp.predicted_us)
    assert ilp.n_tokens == ordered.n_tokens and ilp.nnz == ordered.nnz
    # Shapes are weighed on tile censuses; the chosen one's layout comes whole.
    for s in (fixed, greedy, ilp, placed):
        shape = (s.config["bm"], s.config["bn"])
        whole = sv.planner.tile_layout(ordered, shape, "auto")
        assert not s.layout.tiles.is_census and s.layout.n_positions == whole.n_positions
        for name in ("row_ptr", "col_block", "full", "mask_id", "bitmasks", "cols"):
            assert np.array_equal(getattr(s.layout.tiles, name), getattr(whole.tiles, name))


def test_json_round_trip_and_schema(solved, tmp_path):
    for s in solved.values():
        path = tmp_path / f"{s.method}.json"
        s.to_json(path)
        back = schedule.Schedule.from_json(path)
        assert back == s
        assert schedule.Schedule.from_json(s.to_json()) == s


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("solver"), "missing solver"),
    (lambda d: d.update(method="magic"), "is not one of"),
    (lambda d: d.update(max_tiles=0), "below 1"),
    (lambda d: d["config"].update(bm="64"), "schedule.config.bm: expected integer"),
    (lambda d: (d["programs"]["units"].pop(),  # one unit fewer, ptr still consistent
                d["programs"].update(ptr=[min(p, len(d["programs"]["units"]))
                                          for p in d["programs"]["ptr"]])),
     "exactly once"),
    (lambda d: d["programs"]["units"].__setitem__(0, d["programs"]["units"][1]), "exactly once"),
    (lambda d: d["programs"].update(ptr=[0, 5, 3]), "ptr must rise"),
    (lambda d: d["programs"].update(extra=1), "unexpected extra"),
])
def test_schema_rejects_broken_schedules(solved, mutate, message):
    doc = json.loads(solved["ilp-persistent"].to_json())
    mutate(doc)
    with pytest.raises(SparseVitError, match=message):
        schedule.Schedule.from_dict(doc)


def test_from_json_errors(tmp_path):
    with pytest.raises(SparseVitError, match="no such schedule"):
        schedule.Schedule.from_json(tmp_path / "none.json")
    with pytest.raises(SparseVitError, match="not JSON"):
        schedule.Schedule.from_json("{nope")


def test_planner_runs_the_schedule_and_matches_the_reference(solved, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = sv.masks.vision_longformer((20, 20), window=7, n_global=1)
    q, k, v = (torch.randn(1, SHAPE["heads"], g.n_tokens, 64) for _ in range(3))
    ref = reference(q, k, v, g)
    for method in ("greedy", "ilp", "ilp-persistent"):
        plan = sv.plan(g, reorder="hilbert", device="cpu", schedule=solved[method],
                       heads=SHAPE["heads"], head_dim=64, dtype=torch.float16)
        assert (plan.programs is None) == (solved[method].programs is None)
        out = sv.attention(q.half(), k.half(), v.half(), plan)
        torch.testing.assert_close(out.float(), ref, atol=5e-3, rtol=5e-3)


def test_profile_from_another_gpu(prof, ordered):
    with pytest.raises(SparseVitError, match=r"measured on .* this is NVIDIA A100"):
        schedule.solve(ordered, prof, "ilp", gpu="NVIDIA A100", **SHAPE)


def test_profile_for_another_head_dim_or_dtype(prof, ordered):
    with pytest.raises(SparseVitError, match="head_dim"):
        schedule.solve(ordered, prof, "greedy", **{**SHAPE, "head_dim": 128})
    with pytest.raises(SparseVitError, match="dtype must be"):
        schedule.solve(ordered, prof, "greedy", **{**SHAPE, "dtype": "fp8"})


def test_infeasible_resource_limits(prof, ordered):
    with pytest.raises(SparseVitError, match="no profiled config fits the resource limits"):
        schedule.solve(ordered, prof, "ilp", max_shared_bytes=1024, **SHAPE)
    tight = schedule.solve(ordered, prof, "ilp", max_programs_per_sm=1, **SHAPE)
    assert tight.config["programs_per_sm"] == 1


def test_graph_without_tiles(prof):
    empty = sv.graph.make_graph(__import__("scipy.sparse").sparse.csr_matrix((64, 64)), "empty")
    with pytest.raises(SparseVitError, match="no tiles"):
        schedule.solve(empty, prof, "ilp", **SHAPE)


def test_broken_profiles(tmp_path, ordered):
    with pytest.raises(SparseVitError, match="no such profile"):
        schedule.solve(ordered, tmp_path / "none.json", "ilp", **SHAPE)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "gpu": "x"}))
    with pytest.raises(SparseVitError, match="not a sparsevit profile"):
        schedule.solve(ordered, bad, "ilp", **SHAPE)


def test_no_gpu_and_no_profile_is_a_clear_error(ordered, monkeypatch):
    monkeypatch.setattr(profile_mod, "current_gpu", lambda: None)
    with pytest.raises(SparseVitError, match="no CUDA GPU is visible"):
        schedule.solve(ordered, None, "ilp", **SHAPE)


# --------------------------------------------------------------- dense rectangles

DV_GRID = (64, 64)  # 4,097 tokens; keep 0.5 gives a 2,049-token clique
# Padding would start the cls token's group on its own tile. 12 heads: more work units
# than programs, so removing the clique's rows shortens the makespan (with fewer units
# than programs it is the longest unit's latency, which a pruned token's row sets too).
DV = {**SHAPE, "heads": 12, "pad": False}


@pytest.fixture(scope="module")
def dv():
    g = sv.masks.dynamicvit(DV_GRID, keep=0.5)
    return g, reorder.apply(g, reorder.get("rcm")(g))


def _vendor_scaled(prof: dict, factor: float) -> dict:
    """The profile with its measured vendor-path times multiplied by ``factor``."""
    return {**prof, "dense": [{**d, "us": d["us"] * factor}
                              if d["backend"] == model.VENDOR_PATH else d
                              for d in prof["dense"]]}


def test_the_fixture_prices_the_vendor_path(prof):
    vendor = [d for d in prof["dense"] if d["backend"] == model.VENDOR_PATH]
    assert [d["tokens"] for d in vendor] == list(profile_mod.VENDOR_PATH_TOKENS)
    assert all(d["status"] == "OK" and d["us"] > 0 for d in vendor)


def test_ilp_gives_a_dense_rectangle_to_the_vendor_kernel_when_cheaper(prof, dv):
    _, ordered_dv = dv
    cheap = schedule.solve(ordered_dv, _vendor_scaled(prof, 1e-3), "ilp", **DV)
    dear = schedule.solve(ordered_dv, _vendor_scaled(prof, 1e3), "ilp", **DV)
    assert len(cheap.dense) == 1 and dear.dense == []
    r0, r1, c0, c1 = cheap.dense[0]
    assert r1 - r0 >= 1024 and c1 - c0 == 2049  # the clique's keys, in full
    assert cheap.details["dense_us"] > 0 and dear.details["dense_us"] == 0
    # Its query blocks have no work items; the rest of the graph still does.
    assert 0 < cheap.n_items < dear.n_items
    # (A grid launch may be taken within GRID_MARGIN of the best placement.)
    assert cheap.predicted_us <= dear.predicted_us * (1 + schedule.GRID_MARGIN)
    # The baselines never use the vendor kernel: one tile config for everything.
    for method in ("fixed", "greedy"):
        assert schedule.solve(ordered_dv, _vendor_scaled(prof, 1e-3), method,
                              **DV).dense == []


def test_a_profile_without_vendor_timings_schedules_tiles_only(prof, dv):
    old = {**prof, "dense": [d for d in prof["dense"] if d["backend"] != model.VENDOR_PATH]}
    assert schedule.solve(dv[1], old, "ilp", **DV).dense == []


def test_planner_runs_a_schedule_with_a_dense_rectangle(prof, dv, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g, ordered_dv = dv
    sched = schedule.solve(ordered_dv, _vendor_scaled(prof, 1e-3), "ilp", **DV)
    assert sched.dense
    sched.to_json(tmp_path / "s.json")
    q, k, v = (torch.randn(1, DV["heads"], g.n_tokens, 64) for _ in range(3))
    ref = reference(q, k, v, g)
    plan = sv.plan(g, reorder="rcm", device="cpu", schedule=tmp_path / "s.json",
                   heads=DV["heads"], head_dim=64, pad=False)
    assert plan.dense.tolist() == sched.dense == plan.config["dense"]
    out = sv.attention(q.half(), k.half(), v.half(), plan)
    torch.testing.assert_close(out.float(), ref, atol=5e-3, rtol=5e-3)
    with pytest.raises(SparseVitError, match="leave dense='auto'"):
        sv.plan(g, reorder="rcm", device="cpu", schedule=sched, heads=DV["heads"],
                dense=False)
    moved = schedule.Schedule.from_dict({**sched.to_dict(),
                                         "dense": [[0, 64, 0, 64]]})
    with pytest.raises(SparseVitError, match="not one of this graph's"):
        sv.plan(g, reorder="rcm", device="cpu", schedule=moved, heads=DV["heads"],
                pad=False)


@pytest.mark.parametrize("dense, message", [
    ([[0, 64, 0]], "at least 4"),
    ([[0, 64, 0, 64, 1]], "at most 4"),
    ([[64, 64, 0, 64]], "empty rectangle"),
    ([[0, 64, -1, 64]], "integers >= 0"),
])
def test_schema_rejects_broken_dense_rectangles(solved, dense, message):
    doc = json.loads(solved["greedy"].to_json())
    doc["dense"] = dense
    with pytest.raises(SparseVitError, match=message):
        schedule.Schedule.from_dict(doc)




def test_cli_schedule_writes_a_valid_schedule(tmp_path, capsys):
    from sparsevit import cli

    out = tmp_path / "s.json"
    assert cli.main(["schedule", "--model", "VisionLongformer", "--resolution", "320",
                     "--profile", str(FIXTURE), "--method", "greedy", "--heads", "2",
                     "--output", str(out)]) == 0
    sched = schedule.Schedule.from_json(out)
    assert sched.method == "greedy" and sched.heads == 2 and sched.programs is not None
    assert "predicted us" in capsys.readouterr().out
    assert cli.main(["schedule", "--model", "VisionLongformer", "--resolution", "320",
                     "--profile", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such profile" in err[0]
