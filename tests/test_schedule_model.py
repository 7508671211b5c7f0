"""The scheduling model: bounds, LPT, the arc-flow MILP and the hardware list schedule."""

from __future__ import annotations

import numpy as np
import pytest

import sparsevit as sv
from sparsevit import planner
from sparsevit.schedule import model


def test_lpt_places_every_unit_once_and_respects_the_bound():
    rng = np.random.default_rng(1)
    lat = rng.uniform(1, 10, 97)
    pl = model.lpt(lat, 8)
    assert np.array_equal(np.sort(pl.units), np.arange(97))
    assert pl.ptr[0] == 0 and pl.ptr[-1] == 97 and np.all(np.diff(pl.ptr) >= 0)
    owner = np.repeat(np.arange(8), np.diff(pl.ptr))
    np.testing.assert_allclose(np.bincount(owner, weights=lat[pl.units]), pl.loads)
    assert model.load_bound(lat, 8) <= pl.makespan <= 4 / 3 * model.load_bound(lat, 8)


def test_arcflow_reaches_the_known_optimum_where_lpt_does_not():
    # LPT's classic bad case: 2 programs, jobs 3,3,2,2,2 -> LPT 7, optimum 6 (3+3 | 2+2+2).
    lat = np.array([3.0, 3.0, 2.0, 2.0, 2.0])
    greedy = model.lpt(lat, 2)
    assert greedy.makespan == pytest.approx(7.0)
    out = model.arcflow(lat, 2, greedy, time_limit=20, solver="highs")
    assert out.improved and out.status == "optimal" and out.solver == "highs"
    assert out.placement.makespan == pytest.approx(6.0)
    assert np.array_equal(np.sort(out.placement.units), np.arange(5))


def test_arcflow_keeps_an_optimal_incumbent():
    lat = np.full(12, 2.0)
    greedy = model.lpt(lat, 4)
    out = model.arcflow(lat, 4, greedy, time_limit=5)
    assert not out.improved and out.placement.makespan == pytest.approx(6.0)
    assert out.lower_bound == pytest.approx(6.0)


def test_list_schedule_is_the_hardware_dispatch_in_order():
    # 2 slots, order 4,1,1,1,1: slot A runs 4; slot B runs the four 1s -> makespan 4.
    assert model.list_schedule(np.array([4.0, 1, 1, 1, 1]), 2) == pytest.approx(4.0)
    # Longest last is worse: 1,1,1,1,4 -> 2 + 4 = 6.
    assert model.list_schedule(np.array([1.0, 1, 1, 1, 4]), 2) == pytest.approx(6.0)
    assert model.list_schedule(np.array([2.0, 3.0]), 4) == pytest.approx(3.0)


def test_tiles_per_block_matches_the_extracted_tiles():
    g = sv.masks.vision_longformer((23, 29), window=5, n_global=1)
    shapes = list(planner.TILE_CANDIDATES)
    counts = model.tiles_per_block(g.adjacency, shapes)
    for shape in shapes:
        tiles = sv.blocks.extract_tiles(g.adjacency, shape)
        np.testing.assert_array_equal(counts[shape], np.diff(tiles.row_ptr))


def test_costs_latency_counts_each_tile_kind():
    tiles = planner.tile_layout(sv.masks.vision_longformer((16, 16), window=5, n_global=1),
                                (32, 32), False).tiles
    items = planner.make_work_items(tiles, 4)
    c = model.Costs(32, 32, 4, 2, 2, 3.0, 1.0, 0.5, 0.6, 0.7, 2.0, 0.3, 0.1)
    lat = c.latency(items)
    expect = (1.0 + 0.5 * (items.tmid - items.t0) + 0.6 * (items.tcol - items.tmid)
              + 0.7 * (items.t1 - items.tcol))
    np.testing.assert_allclose(lat, expect)
    n_split = items.split_qb.shape[0]
    assert n_split > 0  # the global token's row is cut
    chunks = int((items.split_s1 - items.split_s0).max())
    waves = -(-n_split * 12 // 132)
    assert c.combine_us(items, 12, 132) == pytest.approx(2.0 + waves * (0.3 + 0.1 * chunks))


def test_split_choices_include_the_planner_default_and_no_split():
    tiles = planner.tile_layout(sv.masks.vision_longformer((16, 16), window=5, n_global=1),
                                (32, 32), False).tiles
    choices = model.split_choices(tiles)
    assert model.default_max_tiles(tiles) in choices
    assert max(choices) >= int(np.diff(tiles.row_ptr).max())


def test_dense_us_interpolates_the_vendor_path_measurements():
    vendor = [{"backend": model.VENDOR_PATH, "tokens": n, "heads": 12, "us": us, "status": "OK"}
              for n, us in ((1024, 20.0), (2048, 50.0))]
    noise = [{"backend": "sdpa_cudnn", "tokens": 1024, "heads": 12, "us": 1.0, "status": "OK"},
             {"backend": model.VENDOR_PATH, "tokens": 4096, "heads": 12, "status": "NS"}]
    measured = vendor + noise
    assert model.dense_us(measured, 1024, 1024, 12) == pytest.approx(20.0)
    assert model.dense_us(measured, 2048, 2048, 12) == pytest.approx(50.0)
    # Halfway in work (rows x keys x batch*heads) is halfway in time.
    mid = (1024**2 + 2048**2) // 2
    assert model.dense_us(measured, mid, 1, 12) == pytest.approx(35.0)
    assert model.dense_us(measured, 2048, 1024, 24) == pytest.approx(50.0)
    assert model.dense_us(measured, 64, 64, 12) == pytest.approx(20.0)  # fixed costs
    assert model.dense_us(measured, 4096, 4096, 12) == pytest.approx(200.0)  # proportional
    assert model.dense_us(noise, 1024, 1024, 12) is None
