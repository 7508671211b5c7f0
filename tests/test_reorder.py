"""T2 reorderings: valid permutations, special-token placement, geometry, clustering."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import reverse_cuthill_mckee

import sparsevit as sv
from sparsevit.blocks import extract_tiles
from sparsevit.errors import SparseVitError
from sparsevit.graph import CLS, GLOBAL, LOCAL, REGIONAL, make_graph

METHODS = ["none", "rcm", "hc", "ic", "hilbert", "morton", "tiled", "grouped"]
GEOMETRY = ["hilbert", "morton", "tiled", "grouped"]
REORDERING = [m for m in METHODS if m != "none"]


def small_graphs():
    return [
        sv.masks.vision_longformer((20, 24), window=5, n_global=2),
        sv.masks.regionvit((20, 15), window=7),
        sv.masks.dynamicvit((12, 10), keep=0.4),
        sv.masks.local_window((9, 13), window=3),
    ]


def is_symmetric(adj: sp.csr_matrix) -> bool:
    return (adj != adj.T).nnz == 0


def check_placement(g, perm: np.ndarray) -> None:
    """Global/cls first in original order; each regional token right before its region's
    first local token, or (without one) right after the global/cls tokens."""
    head = np.flatnonzero((g.kind == GLOBAL) | (g.kind == CLS))
    np.testing.assert_array_equal(perm[: head.size], head)
    rest = perm[head.size:]
    kinds = g.kind[rest]
    assert set(kinds.tolist()) <= {LOCAL, REGIONAL}
    local_regions = set(g.region[rest[kinds == LOCAL]].tolist())
    n_orphans = 0
    for i in np.flatnonzero(kinds == REGIONAL):
        r = g.region[rest[i]]
        if r < 0 or r not in local_regions:
            n_orphans += 1
            assert (kinds[:i] == REGIONAL).all()  # the orphans lead the tail
            continue
        j = i + 1
        while kinds[j] == REGIONAL:
            assert g.region[rest[j]] == r
            j += 1
        assert g.region[rest[j]] == r
        assert r not in set(g.region[rest[:i][kinds[:i] == LOCAL]].tolist())
    assert n_orphans == np.count_nonzero(
        (g.kind == REGIONAL) & ~np.isin(g.region, list(local_regions)))


# ----------------------------------------------------------------------------- API

def test_registry_and_get():
    assert list(sv.reorder.METHODS) == METHODS
    for name, fn in sv.reorder.METHODS.items():
        assert sv.reorder.get(name) is fn
        assert getattr(sv.reorder, name) is fn


def test_unknown_method_raises():
    with pytest.raises(SparseVitError, match=r"unknown reorder method 'x' \(choose from none"):
        sv.reorder.get("x")


@pytest.mark.parametrize("method", GEOMETRY)
def test_geometry_needs_grid_for_bare_matrix(method):
    adj = sv.masks.local_window((6, 7), window=3).adjacency
    with pytest.raises(SparseVitError, match="grid"):
        sv.reorder.get(method)(adj)
    with pytest.raises(SparseVitError, match="grid 5x7 has 35 cells for 42"):
        sv.reorder.get(method)(adj, grid=(5, 7))
    # With the grid, a bare matrix orders exactly like the graph that carries coordinates.
    g = sv.masks.local_window((6, 7), window=3)
    np.testing.assert_array_equal(sv.reorder.get(method)(adj, grid=(6, 7)),
                                  sv.reorder.get(method)(g))


@pytest.mark.parametrize("bad", [np.ones((3, 4)), [[1, 0], [0, 1]], "graph"])
def test_bad_inputs_raise(bad):
    with pytest.raises(SparseVitError):
        sv.reorder.hc(bad)


@pytest.mark.parametrize("method, params", [
    ("hc", {"metric": "cosine"}), ("hc", {"target_size": 0}), ("hc", {"cluster_order": "x"}),
    ("hc", {"block": 0}), ("ic", {"tau": 1.5}), ("ic", {"expand_rounds": 0}),
    ("tiled", {"tile": (0, 8)}), ("tiled", {"tile": 8}), ("ic", {"dense_frac": 0}),
])
def test_bad_parameters_raise(method, params):
    with pytest.raises(SparseVitError):
        sv.reorder.get(method)(sv.masks.local_window((8, 8), window=3), **params)


# ------------------------------------------------------------------ every method

@pytest.mark.parametrize("method", METHODS)
def test_valid_permutation_preserving_pattern(method):
    for g in small_graphs():
        perm = sv.reorder.get(method)(g)
        assert perm.dtype == np.int64
        np.testing.assert_array_equal(np.sort(perm), np.arange(g.n_tokens))
        out = sv.reorder.apply(g, perm)
        assert out.nnz == g.nnz
        np.testing.assert_array_equal(out.order, perm)
        assert is_symmetric(g.adjacency) and is_symmetric(out.adjacency)
        # new[i, j] == old[perm[i], perm[j]]
        dense_old = g.adjacency.toarray()
        np.testing.assert_array_equal(out.adjacency.toarray(), dense_old[perm][:, perm])
        np.testing.assert_array_equal(sv.reorder.get(method)(g), perm)  # deterministic


@pytest.mark.parametrize("method", REORDERING)
def test_special_token_placement(method):
    for g in small_graphs():
        check_placement(g, sv.reorder.get(method)(g))


def test_none_is_identity_even_with_regional_tokens():
    g = sv.masks.regionvit((14, 14), window=7)
    np.testing.assert_array_equal(sv.reorder.none(g), np.arange(g.n_tokens))


def mixed_graph():
    """Special tokens of every kind, interleaved, plus a regional token whose region has
    no local token (region 9) and one without a region."""
    kinds = [REGIONAL, GLOBAL, LOCAL, LOCAL, CLS, REGIONAL, LOCAL, LOCAL, LOCAL, GLOBAL,
             REGIONAL, LOCAL, REGIONAL, REGIONAL, LOCAL, LOCAL]
    region = [1, -1, 0, 1, -1, 0, 0, 1, 2, -1, 9, 2, -1, 2, 1, 2]
    kinds, region = np.array(kinds), np.array(region)
    local = np.flatnonzero(kinds == LOCAL)
    yx = np.full((kinds.size, 2), -1)
    yx[local] = np.stack(np.divmod(np.arange(local.size), 3), axis=1)
    rng = np.random.default_rng(1)
    adj = sp.random(kinds.size, kinds.size, density=0.3, random_state=rng) + sp.eye(kinds.size)
    return make_graph(adj, "mixed", (3, 3), kinds, yx, region)


@pytest.mark.parametrize("method", REORDERING)
def test_placement_of_mixed_special_tokens(method):
    g = mixed_graph()
    perm = sv.reorder.get(method)(g)
    np.testing.assert_array_equal(perm[:3], [1, 4, 9])  # global, cls, global: original order
    check_placement(g, perm)


@pytest.mark.parametrize("method", METHODS)
def test_graph_without_local_tokens(method):
    kinds = np.array([REGIONAL, GLOBAL, REGIONAL, CLS, REGIONAL])
    g = make_graph(sp.csr_matrix(np.ones((5, 5), bool)), "hubs", kind=kinds,
                   region=np.array([0, -1, 1, -1, 2]))
    expected = np.arange(5) if method == "none" else [1, 3, 0, 2, 4]
    np.testing.assert_array_equal(sv.reorder.get(method)(g), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grid", [(45, 80), (7, 5), (1, 9)])
def test_non_square_grids(method, grid):
    g = sv.masks.vision_longformer(grid, window=7, n_global=1)
    perm = sv.reorder.get(method)(g)
    np.testing.assert_array_equal(np.sort(perm), np.arange(g.n_tokens))
    if method != "none":
        check_placement(g, perm)
    assert sv.reorder.apply(g, perm).nnz == g.nnz


@pytest.mark.parametrize("method", METHODS)
def test_bare_matrix_input(method):
    rng = np.random.default_rng(0)
    adj = sp.random(60, 60, density=0.1, random_state=rng, format="csr")
    adj = sp.vstack([adj[:5], sp.csr_matrix((1, 60)), adj[6:]]).tocsr()  # an empty row
    kwargs = {"grid": (6, 10)} if method in GEOMETRY else {}
    perm = sv.reorder.get(method)(adj, **kwargs)
    np.testing.assert_array_equal(np.sort(perm), np.arange(60))


# ----------------------------------------------------------------------- geometry

@given(st.integers(1, 6))
@settings(max_examples=6, deadline=None)
def test_hilbert_steps_to_a_grid_neighbour(bits):
    side = 1 << bits
    g = sv.masks.local_window((side, side), window=1)
    yx = g.yx[sv.reorder.hilbert(g)]
    assert (np.abs(np.diff(yx, axis=0)).sum(axis=1) == 1).all()


def test_morton_and_tiled_orders():
    g = sv.masks.local_window((16, 16), window=1)
    yx = g.yx[sv.reorder.morton(g)]
    np.testing.assert_array_equal(yx[:6], [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3]])
    perm = sv.reorder.tiled(g, tile=(4, 8))
    yx = g.yx[perm]
    assert (yx[:32, 0] < 4).all() and (yx[:32, 1] < 8).all()  # first tile first
    np.testing.assert_array_equal(perm[:32], np.sort(perm[:32]))  # raster inside
    assert (yx[32:64, 0] < 4).all() and (yx[32:64, 1] >= 8).all()  # then the tile to its right


@given(h=st.integers(1, 40), w=st.integers(1, 40), n_global=st.integers(0, 3))
@settings(max_examples=25, deadline=None)
def test_geometry_orders_any_grid(h, w, n_global):
    g = sv.masks.vision_longformer((h, w), window=3, n_global=n_global)
    for method in GEOMETRY:
        perm = sv.reorder.get(method)(g)
        np.testing.assert_array_equal(np.sort(perm), np.arange(g.n_tokens))
        np.testing.assert_array_equal(perm[:n_global], np.arange(n_global))


@pytest.mark.parametrize("method", ["hilbert", "tiled"])
def test_fill_of_local_orders_on_vision_longformer(method):
    g = sv.masks.vision_longformer((128, 128))  # 15x15 window + 1 global token
    raster = extract_tiles(g.adjacency, (64, 64)).stats()["fill"]
    out = sv.reorder.apply(g, sv.reorder.get(method)(g))
    fill = extract_tiles(out.adjacency, (64, 64)).stats()["fill"]
    assert raster < 0.12 and fill >= 0.30


def test_grouped_is_hilbert_without_identical_rows():
    g = sv.masks.vision_longformer((40, 36))  # exact 15x15 window: every row differs
    assert np.unique(sv.graph.row_signatures(g.matrix)).size == g.n_tokens
    np.testing.assert_array_equal(sv.reorder.grouped(g), sv.reorder.hilbert(g))


@pytest.mark.parametrize("grid, n_global", [((30, 33), 1), ((21, 28), 0), ((16, 16), 2)])
def test_grouped_makes_sliding_chunks_contiguous(grid, n_global):
    g = sv.masks.vision_longformer(grid, mode="sliding_chunk", chunk=7, n_global=n_global)
    perm = sv.reorder.grouped(g)
    np.testing.assert_array_equal(np.sort(perm), np.arange(g.n_tokens))
    check_placement(g, perm)
    local = perm[n_global:]
    assert (g.kind[local] == LOCAL).all()
    chunk = (g.yx[local, 0] // 7) * 100 + g.yx[local, 1] // 7
    # One contiguous run per chunk, members in Hilbert order, chunks where their first
    # token stands in Hilbert order.
    assert np.count_nonzero(np.diff(chunk)) + 1 == np.unique(chunk).size
    hilbert = sv.reorder.hilbert(g)[n_global:]
    rank = np.empty(g.n_tokens, np.int64)
    rank[hilbert] = np.arange(hilbert.size)
    for c in np.unique(chunk):
        members = rank[local[chunk == c]]
        assert (np.diff(members) > 0).all()
    in_order = chunk[np.r_[0, np.flatnonzero(np.diff(chunk)) + 1]]
    firsts = [rank[local[chunk == c]].min() for c in in_order]
    assert (np.diff(firsts) > 0).all()
    # Hilbert alone splits chunks: the grouping is doing the work.
    h_chunk = (g.yx[hilbert, 0] // 7) * 100 + g.yx[hilbert, 1] // 7
    assert np.count_nonzero(np.diff(h_chunk)) + 1 > np.unique(h_chunk).size


def test_grouped_compares_whole_rows_including_special_columns():
    # Tokens 1 and 16 (far apart on the 4x4 curve) have the same row and end up side by
    # side; once only one of them attends the global token their rows differ.
    dense = np.zeros((1 + 16, 1 + 16), bool)
    dense[0, :] = True
    dense[1:, 0] = True
    dense[1:, 1:] = np.eye(16, dtype=bool)
    dense[[1, 16], 5] = True
    dense[[1, 16], 1] = dense[[1, 16], 16] = True
    kind = np.r_[GLOBAL, np.zeros(16, int)]
    yx = np.r_[[[-1, -1]], np.stack(np.divmod(np.arange(16), 4), axis=1)]
    together = sv.reorder.grouped(make_graph(sp.csr_matrix(dense), "g", (4, 4), kind, yx))
    pos = np.argsort(together)
    assert abs(pos[1] - pos[16]) == 1
    dense[16, 0] = False
    apart = sv.reorder.grouped(make_graph(sp.csr_matrix(dense), "g", (4, 4), kind, yx))
    pos = np.argsort(apart)
    assert abs(pos[1] - pos[16]) > 1


# ---------------------------------------------------------------------- clustering

def test_rcm_matches_scipy_on_bare_matrix():
    rng = np.random.default_rng(3)
    adj = sp.random(80, 80, density=0.05, random_state=rng, format="csr")
    sym = (adj + adj.T).astype(bool).tocsr()
    np.testing.assert_array_equal(sv.reorder.rcm(adj),
                                  reverse_cuthill_mckee(sym, symmetric_mode=True))


def scattered_groups(n_groups=8, size=40, seed=0):
    """Rows in groups with identical patterns, members scattered over the matrix. Group g
    uses two 16-column blocks of its own and one shared block, so different groups are
    far apart (Jaccard distance >= 0.8) and IC's tau=0.6 keeps them apart too."""
    rng = np.random.default_rng(seed)
    n = n_groups * size
    group = rng.permutation(np.repeat(np.arange(n_groups), size))
    shared0 = 32 * n_groups
    cols = [np.concatenate([32 * g + rng.choice(32, 12, replace=False),
                            rng.integers(shared0, n, 2)]) for g in range(n_groups)]
    row_cols = [cols[group[i]] for i in range(n)]
    rows = np.repeat(np.arange(n), [c.size for c in row_cols])
    return sp.csr_matrix((np.ones(rows.size, bool), (rows, np.concatenate(row_cols))),
                         shape=(n, n)), group


@pytest.mark.parametrize("method, params", [
    ("hc", {}), ("hc", {"metric": "jaccard"}), ("hc", {"cluster_order": "index"}),
    ("ic", {}), ("ic", {"tau": 0.0}),
])
def test_clustering_groups_identical_rows(method, params):
    adj, group = scattered_groups()
    perm = sv.reorder.get(method)(adj, **params)
    runs = group[perm]
    # Each group is one contiguous run, its rows in index order.
    assert np.count_nonzero(np.diff(runs)) == group.max()
    for gid in range(group.max() + 1):
        members = perm[runs == gid]
        np.testing.assert_array_equal(members, np.sort(members))


@pytest.mark.parametrize("method", ["rcm", "hc", "ic"])
def test_clustering_packs_dynamicvit_kept_tokens(method):
    g = sv.masks.dynamicvit((32, 32), keep=0.3)
    perm = sv.reorder.get(method)(g)
    assert perm[0] == 0  # the cls token
    kept_rows = np.diff(g.adjacency.indptr) > 1
    positions = np.flatnonzero(kept_rows[perm[1:]])
    assert positions[-1] - positions[0] + 1 == positions.size  # one contiguous run


def test_hc_tree_order_beats_raster():
    # Seed 000's cluster order (smallest member first) is raster order on a grid mask;
    # reading the dendrogram keeps neighbouring clusters together.
    g = sv.masks.vision_longformer((128, 128))
    fills = {}
    for order in ("tree", "index"):
        out = sv.reorder.apply(g, sv.reorder.hc(g, cluster_order=order))
        fills[order] = extract_tiles(out.adjacency, (64, 64)).stats()["fill"]
    raster = extract_tiles(g.adjacency, (64, 64)).stats()["fill"]
    assert fills["index"] == pytest.approx(raster, abs=0.01)
    assert fills["tree"] > 1.3 * raster
