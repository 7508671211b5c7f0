"""sparsevit.profile: the parts that run without a GPU (fit, occupancy, synthetic graphs,
cache keys, loading) and the CPU-only message; the recorded fixture is a real H100/H200 run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsevit import cli, planner
from sparsevit import profile as profile_mod
from sparsevit.errors import SparseVitError

FIXTURES = Path(__file__).parent / "fixtures"


def test_fit_recovers_known_costs():
    truth = {"launch_us": 4.0, "unit_us": 1.5, "full_us": 0.7, "column_us": 0.8,
             "partial_us": 1.1}
    points = [(m, kind, k, truth["launch_us"] + m * (truth["unit_us"] + k * truth[f"{kind}_us"]))
              for kind in profile_mod.KINDS for m, k in profile_mod.DESIGN]
    fit = profile_mod.fit_costs(points)
    for key, value in truth.items():
        assert fit[key] == pytest.approx(value)
    assert fit["rel_rms"] < 1e-9


def test_programs_per_sm_takes_the_tightest_resource():
    limits = {"regs_per_sm": 65536, "smem_per_sm": 233472, "threads_per_sm": 2048}
    assert profile_mod.programs_per_sm(128, 32768, 4, limits) == 4  # registers
    assert profile_mod.programs_per_sm(32, 100_000, 4, limits) == 2  # shared memory
    assert profile_mod.programs_per_sm(16, 0, 8, limits) == 8  # threads
    assert profile_mod.programs_per_sm(255, 200_000, 8, limits) == 1  # never below one
    assert profile_mod.occupancies(4) == [1, 2, 4] and profile_mod.occupancies(1) == [1]
    # registers go to warps in units of 256: 170 per thread take 176, so two programs fit
    assert profile_mod.programs_per_sm(168, 0, 4, limits) == 3
    assert profile_mod.programs_per_sm(170, 0, 4, limits) == 2


def test_register_cap_makes_the_scheduled_occupancy_fit(monkeypatch):
    import types

    import torch

    from sparsevit import ops

    limits = {"regs_per_sm": 65536, "smem_per_sm": 233472, "threads_per_sm": 2048}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(regs_per_multiprocessor=65536))
    cap = ops.register_cap.__wrapped__
    assert cap("cuda", 3, 4) == 168 and cap("cuda", 1, 4) == 255 and cap("cuda", 2, 8) == 128
    for warps in (4, 8):
        for r in range(1, 9):
            assert profile_mod.programs_per_sm(cap("cuda", r, warps), 0, warps, limits) >= r


@pytest.mark.parametrize("kind", profile_mod.KINDS)
@pytest.mark.parametrize("shape", planner.TILE_CANDIDATES)
def test_synthetic_graphs_have_k_tiles_of_one_kind(kind, shape):
    n_qb = max(profile_mod.query_blocks(132), -(-8 * shape[1] // shape[0]))
    g = profile_mod.synthetic_graph(*shape, kind, 3, n_qb)
    tiles = planner.tile_layout(g, shape, False).tiles
    counts = np.diff(tiles.row_ptr)
    assert counts.shape[0] == n_qb and (counts == 3).all()
    n_full, n_col = int(tiles.full.sum()), int(tiles.cols.sum())
    assert (n_full, n_col) == {"full": (3 * n_qb, 0), "column": (0, 3 * n_qb),
                               "partial": (0, 0)}[kind]


def test_query_blocks_divide_the_sm_count():
    for n_sm in (132, 108, 144, 78):
        d = profile_mod.query_blocks(n_sm)
        assert n_sm % d == 0 and d >= profile_mod.MIN_QUERY_BLOCKS


def test_even_programs():
    p = profile_mod.even_programs(10, 4)
    assert p["ptr"] == [0, 2, 5, 7, 10] and p["units"] == list(range(10))


def test_cache_key_names_gpu_dtype_and_versions():
    key = profile_mod.cache_key("NVIDIA H200", {"triton": "3.6.0", "torch": "2.11.0+cu130"},
                                "bf16", 64)
    assert key == (f"nvidia-h200.v{profile_mod.VERSION}.bf16.d64.triton-3.6.0"
                   ".torch-2.11.0_cu130.json")


def test_cli_profile_on_a_cpu_only_machine(monkeypatch, capsys):
    monkeypatch.setattr(profile_mod, "current_gpu", lambda: None)
    assert cli.main(["profile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0]
    with pytest.raises(SparseVitError, match="no CUDA GPU"):
        profile_mod.measure()


def test_load_and_validate(tmp_path):
    fixture = next(iter(sorted(FIXTURES.glob("profile_*.json"))))
    prof = profile_mod.load(fixture)
    assert profile_mod.load(prof) is prof
    costs = profile_mod.costs(prof)
    # a fit that misses its own points (usable: False) gives no costs
    assert len(costs) == sum(f.get("usable", True) for c in prof["configs"] for f in c["fits"])
    broken = json.loads(fixture.read_text())
    del broken["configs"][0]["fits"][0]["partial_us"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(SparseVitError, match="full/column/partial_us"):
        profile_mod.load(path)
    path.write_text("{")
    with pytest.raises(SparseVitError, match="unreadable profile"):
        profile_mod.load(path)


def test_cached_profile_is_found_by_gpu_and_versions(tmp_path, monkeypatch):
    fixture = next(iter(sorted(FIXTURES.glob("profile_*.json"))))
    prof = json.loads(fixture.read_text())
    monkeypatch.setenv("SPARSEVIT_CACHE", str(tmp_path))
    monkeypatch.setattr(profile_mod, "current_gpu", lambda: prof["gpu"])
    with pytest.raises(SparseVitError, match="run `sparsevit profile"):
        profile_mod.load(None, prof["dtype"], prof["head_dim"])
    key = profile_mod.cache_key(prof["gpu"], profile_mod.software(), prof["dtype"],
                                prof["head_dim"])
    profile_mod.save(prof, profile_mod.cache_dir() / key)
    assert profile_mod.load(None, prof["dtype"], prof["head_dim"])["gpu"] == prof["gpu"]


def test_combine_fit_through_three_points_and_never_below_zero():
    # launch 2, wave 1, chunk 0.5: (1 wave, 2 chunks, 4 us), (1, 4, 5), (6, 4, 20)
    assert profile_mod.combine_fit([(1, 2, 4.0), (1, 4, 5.0), (6, 4, 20.0)]) == pytest.approx(
        {"launch_us": 2.0, "wave_us": 1.0, "chunk_us": 0.5})
    # Noise: more chunks measured faster, more waves faster, a launch below zero.
    assert profile_mod.combine_fit([(1, 2, 6.0), (1, 4, 5.0), (6, 4, 3.0)]) == {
        "launch_us": 5.0, "wave_us": 0.0, "chunk_us": 0.0}
    assert profile_mod.combine_fit([(1, 2, 1.0), (1, 4, 1.0), (6, 4, 21.0)]) == pytest.approx(
        {"launch_us": 0.0, "wave_us": 4.0, "chunk_us": 0.0})
    with pytest.raises(SparseVitError, match="combine points"):
        profile_mod.combine_fit([(1, 4, 1.0), (1, 4, 2.0), (6, 4, 3.0)])


FAKE_COSTS = {"launch_us": 7.0, "unit_us": 2.0, "full_us": 1.0, "column_us": 1.1,
              "partial_us": 1.5}


class _FakeRunner:
    """Stands in for the GPU: times follow known costs; the first timing of one point is
    disturbed (3x slower), as a clock change or a neighbour's kernel would make it."""

    def __init__(self, n_sm, head_dim, dtype):
        self.calls = 0

    def resources(self, cfg):
        if cfg["bm"] == 128:
            raise RuntimeError("out of resource: shared memory")
        return {"n_regs": 128, "n_spills": 0, "shared_bytes": 40000}

    def time(self, cfg, kind, k, m, programs):
        self.calls += 1
        c = FAKE_COSTS
        us = c["launch_us"] + m * (c["unit_us"] + k * c[f"{kind}_us"])
        return m, us * (3.0 if self.calls == 2 else 1.0)

    def combine(self, cfg):
        return {"bm": cfg["bm"], "launch_us": 5.0, "wave_us": 1.0, "chunk_us": 0.5,
                "points": []}

    def dense(self):
        return []


def test_measure_assembles_a_profile_and_retimes_a_disturbed_point(monkeypatch):
    import torch

    monkeypatch.setattr(profile_mod, "current_gpu", lambda: "Fake GPU")
    monkeypatch.setattr(profile_mod, "_Runner", _FakeRunner)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    props = type("Props", (), {"multi_processor_count": 132, "regs_per_multiprocessor": 65536,
                               "shared_memory_per_multiprocessor": 233472,
                               "max_threads_per_multi_processor": 2048})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    prof = profile_mod.measure(shapes=[(64, 64), (128, 64)], launches=[(4, 2)])
    assert profile_mod.validate(prof, "measured") is prof
    assert [c["bm"] for c in prof["configs"]] == [64] and prof["skipped"][0]["status"] == "NS"
    fits = prof["configs"][0]["fits"]
    assert [f["programs_per_sm"] for f in fits] == [1, 2, 4]  # 128 regs x 128 threads: 4
    assert fits[0]["retimed"] >= 1 and all(f["usable"] for f in fits)
    for f in fits:
        for key, value in FAKE_COSTS.items():
            assert f[key] == pytest.approx(value)
    assert len(profile_mod.costs(prof)) == 3
