"""Padded layouts: closed groups, aligned positions, the moved adjacency."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsevit as sv
from sparsevit import layout, planner
from sparsevit import reorder as reorder_mod
from sparsevit.graph import CLS


def brute_groups(adj: np.ndarray) -> list[int]:
    n = adj.shape[0]
    cuts = [i + 1 for i in range(n - 1) if not adj[:i + 1, i + 1:].any()
            and not adj[i + 1:, :i + 1].any()]
    return [0, *cuts, n]


@pytest.mark.parametrize("seed", range(60))
def test_closed_groups_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    adj = rng.random((n, n)) < rng.uniform(0.0, 0.15)
    if seed % 3 == 1:
        adj = np.triu(adj)  # directed edges: both directions of a cut are checked
    elif seed % 3 == 2:
        adj = np.tril(adj)
    csr = sp.csr_matrix(adj)
    csr.indices = csr.indices.copy()
    assert layout.closed_groups(csr).tolist() == brute_groups(adj)


def test_regionvit_windows_start_on_tile_boundaries() -> None:
    g = sv.masks.regionvit((28, 28), window=7)
    ordered = reorder_mod.apply(g, reorder_mod.get("rcm")(g))
    positions, n_pos = layout.pad_positions(ordered, (64, 64))
    bounds = layout.closed_groups(ordered.adjacency)
    assert (np.diff(bounds) == 50).all()  # 1 regional + 49 local tokens per window
    assert (positions[bounds[:-1]] % 64 == 0).all() and n_pos == 64 * (len(bounds) - 1)
    assert (np.diff(positions) > 0).all()


def test_global_tokens_get_their_own_block_and_edges_survive() -> None:
    g = sv.masks.vision_longformer((10, 10), window=3, n_global=2)
    ordered = reorder_mod.apply(g, reorder_mod.get("hilbert")(g))
    positions, n_pos = layout.pad_positions(ordered, (32, 16))
    assert positions[:2].tolist() == [0, 1] and positions[2] == 32  # a whole 32-row block
    moved = layout.padded_adjacency(ordered.adjacency, positions, n_pos)
    a = ordered.adjacency.tocoo()
    b = moved.tocoo()
    assert {(positions[r], positions[c]) for r, c in zip(a.row, a.col, strict=True)} == \
        set(zip(b.row.tolist(), b.col.tolist(), strict=True))


def test_cls_inside_a_closed_group_stays_with_it() -> None:
    """DynamicViT's cls token belongs to the kept-token clique: no block of its own, so
    the clique pads to whole query blocks and the dense rectangle covers all its rows."""
    g = sv.masks.dynamicvit((20, 20), keep=0.3)
    ordered = reorder_mod.apply(g, reorder_mod.get("rcm")(g))
    assert ordered.kind[0] == CLS  # the lead rule would apply
    clique = 1 + g.params["kept_tokens"]
    positions, n_pos = layout.pad_positions(ordered, (32, 32))
    assert positions[:clique].tolist() == list(range(clique))  # cls kept in place
    assert positions[clique] == -(-clique // 32) * 32  # the first dropped token
    lay = planner.tile_layout(ordered, (32, 32), "auto")
    assert lay.n_positions == n_pos
    assert planner.find_dense(lay.tiles, True).tolist() == [[0, positions[clique], 0, clique]]


def test_small_groups_pack_without_padding() -> None:
    eye = sp.identity(40, dtype=bool, format="csr")  # 40 singletons: nothing to align
    g = sv.masks.from_matrix(eye)
    positions, n_pos = layout.pad_positions(g, (64, 64))
    assert n_pos == 40 and positions.tolist() == list(range(40))


# ------------------------------------------------------------- identical rows

def rows_of(csr: sp.csr_matrix) -> list[tuple[int, ...]]:
    return [tuple(sorted(set(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tolist())))
            for i in range(csr.shape[0])]


@pytest.mark.parametrize("seed", range(40))
def test_row_signatures_equal_iff_rows_equal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_cols = int(rng.integers(1, 30)), int(rng.integers(1, 12))
    dense = rng.random((n, n_cols)) < rng.uniform(0.0, 0.5)
    dense = dense[rng.integers(0, n, n)]  # repeated rows, so equal pairs are common
    csr = sp.csr_matrix(dense)
    sig = sv.graph.row_signatures(csr)
    assert sig.dtype == np.uint64 and sig.shape == (n,)
    rows = rows_of(csr)
    for i in range(n):
        assert (sig[i] == 0) == (rows[i] == ())
        for j in range(n):
            assert (sig[i] == sig[j]) == (rows[i] == rows[j]), (i, j)


def test_row_signatures_are_exact_sums_modulo_2_64() -> None:
    n = 50
    weights = sv.graph.row_signatures(sp.identity(n, dtype=bool, format="csr"))
    assert weights.max() >= 2**62  # full 64-bit weights: sums do wrap around
    rng = np.random.default_rng(3)
    dense = rng.random((n, n)) < 0.4
    sig = sv.graph.row_signatures(sp.csr_matrix(dense))
    for i in range(n):  # Python integers: no float rounding, explicit wrap-around
        assert int(sig[i]) == sum(int(w) for w in weights[dense[i]]) % 2**64
    # The same relation stored unsorted with duplicate entries gets the same signatures.
    coo = sp.csr_matrix(dense).tocoo()
    messy = sp.csr_matrix((np.ones(2 * coo.nnz), (np.r_[coo.row, coo.row][::-1],
                                                   np.r_[coo.col, coo.col][::-1])),
                          shape=(n, n))
    np.testing.assert_array_equal(sv.graph.row_signatures(messy), sig)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_row_signatures_in_passes(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    dense = rng.random((40, 40)) < 0.2
    dense[5] = dense[6] = False  # empty rows between passes
    dense[7] = True  # a row longer than a pass
    csr = sp.csr_matrix(dense)
    whole = sv.graph.row_signatures(csr)
    monkeypatch.setattr(sv.graph, "_SUM_CHUNK", chunk)
    np.testing.assert_array_equal(sv.graph.row_signatures(csr), whole)


def test_identical_runs() -> None:
    dense = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]], bool)
    runs = layout.identical_runs(sp.csr_matrix(dense))
    assert runs.tolist() == [0, 2, 3, 5, 6]


def test_long_run_inside_a_closed_group_keeps_the_group_aligned() -> None:
    # 3 singletons, a closed group of 80 tokens (3..82) whose rows 13..52 are one clique
    # (identical rows, linked to the rest of the group through rows 12 and 53), 20
    # singletons. Tile 32: the group's edges and the run's edges start tiles.
    n = 103
    dense = np.eye(n, dtype=bool)
    for i in range(3, 83):
        if not 13 <= i < 53:
            dense[i, [i - 1 if i > 3 else i, i + 1 if i < 82 else i]] = True
    dense[13:53, 13:53] = True
    g = sv.masks.from_matrix(sp.csr_matrix(dense))
    assert layout.closed_groups(g.adjacency).tolist() == [0, 1, 2, 3, *range(83, n + 1)]
    positions, n_pos = layout.pad_positions(g, (32, 32))
    expected = np.r_[0:3, 32:42, 64:104, 128:158, 160:180]
    assert positions.tolist() == expected.tolist() and n_pos == 180


@pytest.mark.parametrize("grid, n_global", [((56, 56), 1), ((49, 63), 0), ((84, 77), 2)])
def test_grouped_sliding_chunks_start_on_tiles_and_need_fewer_tiles(grid, n_global) -> None:
    # Grids are multiples of the chunk: on others the 1-6 token wide border chunks are
    # short runs, and on small grids they can make padding cost tiles (planner's "auto").
    g = sv.masks.vision_longformer(grid, mode="sliding_chunk", chunk=7, n_global=n_global)
    ordered = reorder_mod.apply(g, reorder_mod.grouped(g))
    tile = (64, 64)
    positions, n_pos = layout.pad_positions(ordered, tile)
    assert (np.diff(positions) > 0).all() and n_pos >= ordered.n_tokens
    chunk = (ordered.yx[:, 0] // 7) * 1000 + ordered.yx[:, 1] // 7
    chunk[:n_global] = -1
    starts = np.r_[n_global, np.flatnonzero(np.diff(chunk[n_global:])) + n_global + 1]
    sizes = np.diff(np.r_[starts, ordered.n_tokens])
    long = sizes >= 32
    assert long.any() and (positions[starts[long]] % 64 == 0).all()
    after = np.r_[positions, n_pos][starts[long] + sizes[long]]  # what follows each run
    assert (after % 64 == 0).all()
    padded = planner.tile_layout(ordered, tile, True).tiles
    plain = planner.tile_layout(ordered, tile, False).tiles
    assert padded.n_tiles < plain.n_tiles
    assert padded.cols.sum() >= 0.9 * padded.n_tiles  # uniform query blocks: column tiles


def test_block_memory_rows() -> None:
    """A block's first memory row where its tokens are consecutive rows with padding only
    after them; None as soon as one block is not so."""
    pad = 9  # n_tokens: the padding mark
    rows = layout.block_memory_rows
    np.testing.assert_array_equal(rows(np.arange(9), 4, 9), [0, 4, 8])
    # tokens 0-2 | padding | 3-6 | 7, 8, then padding, then a block of padding only
    slots = np.array([0, 1, 2, pad, 3, 4, 5, 6, 7, 8, pad, pad, pad, pad, pad, pad])
    np.testing.assert_array_equal(rows(slots, 4, 9), [0, 3, 7, 9])
    assert rows(slots, 8, 9) is None  # block 0 holds tokens 0-2, then 3 at offset 4
    assert rows(np.array([0, pad, 1, 2]), 4, 9) is None  # padding between tokens
    assert rows(np.array([1, 0, 2, 3]), 4, 9) is None  # not in memory order
    assert rows(np.array([pad, 0, 1, 2]), 4, 9) is None  # would start at row -1
