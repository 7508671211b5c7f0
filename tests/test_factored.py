"""Factored adjacencies (dense bicliques + a sparse remainder) against their exact CSR.

DynamicViT is built factored; every planning stage that works on the factors (permute,
reorder, closed groups / padding, tile extraction, the scheduler's cell counts) must give
exactly what it gives on the materialised CSR of the same graph.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevit as sv
from sparsevit import blocks, graph, layout, masks, planner, reorder
from sparsevit.errors import SparseVitError
from sparsevit.graph import Biclique, FactoredAdjacency

TILES = [(16, 16), (16, 64), (32, 32), (64, 16), (64, 128)]
TILE_FIELDS = ("row_ptr", "col_block", "nnz", "full", "mask_id", "bitmasks", "cols")


def as_csr_graph(g: graph.AttentionGraph) -> graph.AttentionGraph:
    """The same graph with its adjacency materialised (the planner's pre-factored path)."""
    return graph.make_graph(g.adjacency, g.name, g.grid, g.kind, g.yx, g.region, g.order,
                            g.params)


def assert_same_tiles(a: blocks.TileSet, b: blocks.TileSet) -> None:
    assert (a.bm, a.bn, a.n_tokens) == (b.bm, b.bn, b.n_tokens)
    for name in TILE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and np.array_equal(x, y), name


def dv_reference(keep: np.ndarray) -> np.ndarray:
    """DynamicViT's mask, dense: kept tokens and cls attend to each other, the rest to
    themselves."""
    kept = np.concatenate([[True], keep.reshape(-1)])
    return (kept[:, None] & kept[None, :]) | np.eye(kept.shape[0], dtype=bool)


keep_masks = st.tuples(st.integers(1, 24), st.integers(1, 24), st.floats(0.0, 1.0),
                       st.integers(0, 2**31 - 1)).map(
    lambda a: np.random.default_rng(a[3]).random((a[0], a[1])) < a[2])


@settings(max_examples=40, deadline=None)
@given(keep=keep_masks, seed=st.integers(0, 2**31 - 1))
def test_factored_dynamicvit_tiles_equal_the_csr_tiles(keep, seed):
    rng = np.random.default_rng(seed)
    g = masks.dynamicvit(keep.shape, keep_mask=keep)
    assert isinstance(g.matrix, FactoredAdjacency)
    assert np.array_equal(g.adjacency.toarray(), dv_reference(keep))
    assert g.nnz == g.adjacency.nnz and g.adjacency.has_canonical_format
    perm = rng.permutation(g.n_tokens)
    moved = graph.permute(g, perm)
    assert np.array_equal(moved.adjacency.toarray(), dv_reference(keep)[perm][:, perm])
    ref = as_csr_graph(moved)
    for tile in TILES:
        assert_same_tiles(blocks.extract_tiles(moved.matrix, tile),
                          blocks.extract_tiles(ref.adjacency, tile))
        assert_same_tiles(blocks.extract_tiles(moved.matrix, tile, census=True),
                          blocks.extract_tiles(ref.adjacency, tile, census=True))
        assert np.array_equal(layout.closed_groups(moved.matrix),
                              layout.closed_groups(ref.adjacency))
        for pad in (True, False, "auto"):
            a, b = planner.tile_layout(moved, tile, pad), planner.tile_layout(ref, tile, pad)
            assert_same_tiles(a.tiles, b.tiles)
            assert np.array_equal(a.positions, b.positions) and a.n_positions == b.n_positions


def test_general_factors_with_several_bicliques_and_a_remainder():
    """Non-square bicliques next to a random remainder (disjoint), in every stage."""
    rng = np.random.default_rng(7)
    n = 150
    parts = (Biclique(np.arange(3, 40), np.arange(10, 90, 3)),
             Biclique(np.arange(60, 149, 2), np.arange(95, 140)))
    dense = np.zeros((n, n), bool)
    for b in parts:
        dense[np.ix_(b.rows, b.cols)] = True
    rest = (rng.random((n, n)) < 0.05) & ~dense
    g = graph.make_graph(FactoredAdjacency(n, parts, sp.csr_matrix(rest)), "mixed")
    assert np.array_equal(g.adjacency.toarray(), dense | rest)
    ref = as_csr_graph(g)
    for tile in TILES:
        assert_same_tiles(blocks.extract_tiles(g.matrix, tile),
                          blocks.extract_tiles(ref.adjacency, tile))
    shapes = [(32, 64), (64, 64), (128, 32)]
    from sparsevit.schedule import model  # the scheduler's cheap per-shape tile counts

    got, want = model.tiles_per_block(g.matrix, shapes), model.tiles_per_block(ref.adjacency,
                                                                               shapes)
    assert all(np.array_equal(got[s], want[s]) for s in shapes)
    window = np.arange(20, n)
    assert np.array_equal(g.matrix.window(window).tocsr().toarray(),
                          (dense | rest)[20:, 20:])


def test_row_signatures_of_factors_equal_those_of_the_csr():
    """Bicliques whose rows also hold remainder entries, rows in two bicliques, rows
    that equal other rows only through different parts, and empty rows."""
    rng = np.random.default_rng(11)
    n = 120
    parts = (Biclique(np.arange(0, 60, 2), np.arange(70, 80)),
             Biclique(np.arange(10, 40), np.arange(100, 104)),
             Biclique(np.array([90, 91]), np.arange(0, 50)))
    dense = np.zeros((n, n), bool)
    for b in parts:
        dense[np.ix_(b.rows, b.cols)] = True
    rest = (rng.random((n, n)) < 0.03) & ~dense
    rest[85:95] = False
    rest[92, :50] = True  # row 92 equals rows 90, 91 through the remainder alone
    rest[1] = rest[0]
    rest[1, 70:80] = True  # row 1 equals row 0, whose columns 70..79 are its biclique's
    fact = FactoredAdjacency(n, parts, sp.csr_matrix(rest))
    graph.make_graph(fact, "check")  # the parts are disjoint
    sig = graph.row_signatures(fact)
    np.testing.assert_array_equal(sig, graph.row_signatures(fact.tocsr()))
    assert sig[90] == sig[91] == sig[92] and sig[0] == sig[1]
    assert (sig[85:90] == 0).all() and len(set(sig[:85].tolist())) > 70
    g = masks.dynamicvit((24, 20), keep=0.343, seed=3)
    np.testing.assert_array_equal(graph.row_signatures(g.matrix),
                                  graph.row_signatures(g.adjacency))


@pytest.mark.parametrize("method", sorted(reorder.METHODS))
def test_reorders_of_a_factored_graph_match_the_csr_graph(method):
    """hc, ic and the geometric orders give the same permutation as on the CSR; rcm runs
    on a sparse surrogate of the clique and must give the same tiles."""
    g = masks.dynamicvit((24, 20), keep=0.343, seed=3)
    ref = as_csr_graph(g)
    perm = reorder.get(method)(g)
    graph.validate_permutation(perm, g.n_tokens)
    want = reorder.get(method)(ref)
    if method != "rcm":
        assert np.array_equal(perm, want)
    for tile in ((64, 64), (32, 64)):
        assert_same_tiles(blocks.extract_tiles(reorder.apply(g, perm).matrix, tile),
                          blocks.extract_tiles(reorder.apply(ref, want).adjacency, tile))


@settings(max_examples=15, deadline=None)
@given(keep=keep_masks)
def test_rcm_surrogate_gives_the_tiles_of_rcm_on_the_clique(keep):
    g = masks.dynamicvit(keep.shape, keep_mask=keep)
    ref = as_csr_graph(g)
    got = reorder.apply(g, reorder.rcm(g)).matrix
    want = reorder.apply(ref, reorder.rcm(ref)).adjacency
    assert_same_tiles(blocks.extract_tiles(got, (16, 32)), blocks.extract_tiles(want, (16, 32)))


def test_make_graph_rejects_overlapping_or_unsorted_factors():
    n = 8
    clique = Biclique(np.arange(4), np.arange(4))
    loops = sp.csr_matrix(np.eye(n, dtype=bool))  # overlaps the clique's diagonal
    with pytest.raises(SparseVitError, match="overlap"):
        graph.make_graph(FactoredAdjacency(n, (clique,), loops), "bad")
    twice = (clique, Biclique(np.arange(2, 6), np.arange(3, 5)))
    with pytest.raises(SparseVitError, match="overlap"):
        graph.make_graph(FactoredAdjacency(n, twice, sp.csr_matrix((n, n), dtype=bool)), "bad")
    with pytest.raises(SparseVitError, match="sorted unique"):
        graph.make_graph(FactoredAdjacency(n, (Biclique(np.array([2, 1]), np.arange(3)),),
                                           sp.csr_matrix((n, n), dtype=bool)), "bad")


def test_make_graph_copy_false_shares_only_a_canonical_csr():
    canon = sp.csr_matrix(np.eye(5, dtype=bool))
    assert graph.make_graph(canon, "x", copy=False).adjacency is canon
    assert graph.make_graph(canon, "x").adjacency is not canon
    messy = sp.csr_matrix((np.array([1.0, 0.0, 2.0]), np.array([1, 0, 1]), np.array([0, 2, 3])),
                          shape=(2, 2))
    g = graph.make_graph(messy, "x", copy=False)
    assert g.adjacency is not messy and g.adjacency.dtype == bool and g.nnz == 2


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="kernel on the CPU needs TRITON_INTERPRET=1 (make test sets it)")
def test_attention_on_a_factored_graph_equals_the_csr_graph():
    torch = pytest.importorskip("torch")
    g = masks.dynamicvit((5, 7), keep=0.4, seed=1)
    q, k, v = (torch.randn(1, 2, g.n_tokens, 16, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    outs = [sv.attention(q, k, v, sv.plan(x, reorder="rcm", tile=(16, 16), heads=2,
                                          head_dim=16, device="cpu", dtype=torch.float32))
            for x in (g, as_csr_graph(g))]
    assert torch.equal(outs[0], outs[1])
