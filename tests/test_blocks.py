"""Tiles and greedy dense blocks against brute-force dense computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsevit import masks
from sparsevit.blocks import (
    TILE_SIZES,
    WORD_BITS,
    DenseBlock,
    blocks_stats,
    dense_spans,
    extract_tiles,
    grow_blocks,
    parse_tile,
    self_only_spans,
)
from sparsevit.errors import SparseVitError

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def dense_masks(draw, max_n: int = 300, square: bool = True) -> np.ndarray:
    """Random boolean masks: uniform noise, aligned full cells (to get full tiles), bands."""
    n = draw(st.integers(1, max_n))
    m = n if square else draw(st.integers(1, max_n))
    density = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    style = draw(st.sampled_from(["uniform", "cells", "band"]))
    if style == "uniform":
        return rng.random((n, m)) < density
    if style == "cells":
        unit = draw(st.sampled_from([1, 4, 16, 32, 64]))
        cells = rng.random((-(-n // unit), -(-m // unit))) < density
        return np.kron(cells, np.ones((unit, unit), dtype=bool))[:n, :m]
    width = draw(st.integers(0, max(n, m)))
    return abs(np.arange(n)[:, None] - np.arange(m)[None, :]) <= width


# ------------------------------------------------------------------------------- tiles


def check_tiles(mask: np.ndarray, bm: int, bn: int) -> None:
    n = mask.shape[0]
    ts = extract_tiles(sp.csr_matrix(mask), (bm, bn))
    n_qb, n_kb = -(-n // bm), -(-n // bn)
    padded = np.zeros((n_qb * bm, n_kb * bn), dtype=bool)
    padded[:n, :n] = mask
    tiles = padded.reshape(n_qb, bm, n_kb, bn).transpose(0, 2, 1, 3)
    counts = tiles.sum(axis=(2, 3))
    qb, kb = np.nonzero(counts)  # row-major: by query block, then key block

    assert (ts.bm, ts.bn, ts.n_tokens) == (bm, bn, n)
    assert (ts.n_query_blocks, ts.n_key_blocks, ts.n_tiles) == (n_qb, n_kb, qb.shape[0])
    assert ts.row_ptr[0] == 0 and (np.diff(ts.row_ptr) >= 0).all()
    assert (ts.row_ptr == np.searchsorted(qb, np.arange(n_qb + 1))).all()
    assert (ts.col_block == kb).all()
    for i in range(n_qb):  # strictly ascending key blocks within a query block
        assert (np.diff(ts.col_block[ts.row_ptr[i]:ts.row_ptr[i + 1]]) > 0).all()
    assert (ts.nnz == counts[qb, kb]).all()
    assert (ts.full == (counts[qb, kb] == bm * bn)).all()
    edge = ((qb + 1) * bm > n) | ((kb + 1) * bn > n)
    assert not ts.full[edge].any()
    partial = ~ts.full
    assert (ts.mask_id[ts.full] == -1).all()
    assert (ts.mask_id[partial] == np.arange(partial.sum())).all()

    nw = -(-bn // WORD_BITS)
    assert ts.words_per_row == nw
    assert ts.bitmasks.dtype == np.int32 and ts.bitmasks.shape == (partial.sum(), bm, nw)
    bits = np.zeros((partial.sum(), bm, nw * WORD_BITS), dtype=np.uint64)
    bits[:, :, :bn] = tiles[qb[partial], kb[partial]]
    words = (bits.reshape(-1, bm, nw, WORD_BITS) << np.arange(WORD_BITS, dtype=np.uint64)).sum(-1)
    assert (ts.bitmasks.view(np.uint32) == words).all()
    assert (ts.dense_mask() == mask).all()
    # The census: the same tiles and flags, row 0 of each bitmask only.
    census = extract_tiles(sp.csr_matrix(mask), (bm, bn), census=True)
    assert census.is_census and not ts.is_census
    for name in ("row_ptr", "col_block", "nnz", "full", "mask_id", "cols"):
        assert np.array_equal(getattr(census, name), getattr(ts, name)), name
    assert np.array_equal(census.bitmasks, ts.bitmasks[:, :1])
    if partial.any():
        with pytest.raises(SparseVitError, match="census"):
            census.dense_mask()

    stats = ts.stats()
    useful = int(mask.sum())
    assert stats["tile"] == f"{bm}x{bn}"
    assert (stats["tiles"], stats["full"]) == (qb.shape[0], int(ts.full.sum()))
    assert stats["partial"] + stats["column"] == qb.shape[0] - stats["full"]
    # Column tiles: every in-sequence row of the tile has the same bits.
    rows_in = np.minimum(bm, n - qb * bm)
    same = np.array([(tiles[a, b, :r] == tiles[a, b, :1]).all()
                     for a, b, r in zip(qb, kb, rows_in, strict=True)], bool)
    assert (ts.cols == (same & ~ts.full)).all()
    assert stats["tiles_frac"] == pytest.approx(qb.shape[0] / (n_qb * n_kb))
    assert stats["fill"] == pytest.approx(useful / (qb.shape[0] * bm * bn) if useful else 0.0)
    assert stats["density"] == pytest.approx(useful / n**2)


@SETTINGS
@given(dense_masks())
def test_tiles_match_brute_force(mask):
    for bm in TILE_SIZES:
        for bn in TILE_SIZES:
            check_tiles(mask, bm, bn)


@pytest.mark.parametrize("graph", [
    masks.vision_longformer((16, 16), window=7), masks.regionvit((14, 14), window=7),
    masks.dynamicvit((12, 12), keep=0.5), masks.dense(130),
], ids=lambda g: g.name)
@pytest.mark.parametrize("tile", ["16x16", "32x64", "128x16"])
def test_tiles_of_patterns(graph, tile):
    check_tiles(graph.adjacency.toarray(), *parse_tile(tile))


def test_tiles_full_dense():
    ts = extract_tiles(masks.dense(128).adjacency, (64, 32))
    assert ts.full.all() and ts.bitmasks.shape == (0, 64, 1)
    assert ts.stats()["fill"] == 1.0


def test_tiles_empty_and_non_canonical():
    ts = extract_tiles(sp.csr_matrix((70, 70), dtype=bool), "32x32")
    assert ts.n_tiles == 0 and (ts.row_ptr == 0).all() and ts.stats()["fill"] == 0.0
    assert not ts.dense_mask().any()
    # Duplicates and stored zeros are not attended entries; the input stays as given.
    data = np.array([1, 1, 0, 1], dtype=np.int8)
    indices, indptr = np.array([3, 3, 5, 0]), np.array([0, 3, 4] + [4] * 14)
    odd = sp.csr_matrix((data, indices, indptr), shape=(16, 16))
    ts = extract_tiles(odd, (16, 16))
    assert ts.nnz.tolist() == [2] and ts.dense_mask().sum() == 2
    assert odd.data.tolist() == [1, 1, 0, 1] and odd.indices.tolist() == [3, 3, 5, 0]


def test_tiles_reject_non_square():
    with pytest.raises(SparseVitError, match="square"):
        extract_tiles(sp.csr_matrix(np.ones((20, 40))), (16, 16))


@pytest.mark.parametrize("spec, tile", [
    ("64x64", (64, 64)), ("16X128", (16, 128)), ((32, 16), (32, 16)),
    ((np.int64(128), 64), (128, 64)),
])
def test_parse_tile(spec, tile):
    assert parse_tile(spec) == tile
    assert all(type(side) is int for side in parse_tile(spec))


@pytest.mark.parametrize("spec", [
    "64", "64x", "x64", "64x64x64", "48x64", "8x64", "256x256", "-16x16", "", "sixteen",
    "16 x 16", (8, 64), (64,), (64, 64, 64), 64, (64.5, 64), None,
])
def test_parse_tile_errors(spec):
    with pytest.raises(SparseVitError):
        parse_tile(spec)


# ------------------------------------------------------------------ greedy dense blocks


def grow_reference(mask: np.ndarray, rho_min: float, cap: int) -> list[tuple[int, ...]]:
    """Seed 000's extraction, written directly on a dense matrix."""
    n, m = mask.shape
    covered = np.zeros_like(mask)
    out = []
    while (todo := np.flatnonzero(mask & ~covered)).size:
        r0, c0 = divmod(int(todo[0]), m)
        r1, c1 = r0 + 1, c0 + 1
        while True:
            best = None
            if c1 - c0 < cap and c1 < m:
                area = (r1 - r0) * (c1 + 1 - c0)
                if mask[r0:r1, c0:c1 + 1].sum() / area >= rho_min:
                    best = ("right", area)
            if r1 - r0 < cap and r1 < n:
                area = (r1 + 1 - r0) * (c1 - c0)
                if mask[r0:r1 + 1, c0:c1].sum() / area >= rho_min and (
                        best is None or area > best[1]):
                    best = ("down", area)
            if best is None:
                break
            if best[0] == "right":
                c1 += 1
            else:
                r1 += 1
        covered[r0:r1, c0:c1] |= mask[r0:r1, c0:c1]
        out.append((r0, r1, c0, c1, int(mask[r0:r1, c0:c1].sum())))
    return out


def check_blocks(mask: np.ndarray, blocks: list[DenseBlock], rho_min: float, cap: int) -> None:
    n, m = mask.shape
    first = np.full(mask.shape, len(blocks))  # first block covering each entry
    for k, b in reversed(list(enumerate(blocks))):
        h, w = b.r1 - b.r0, b.c1 - b.c0
        assert 0 <= b.r0 < b.r1 <= n and 0 <= b.c0 < b.c1 <= m
        assert h <= cap and w <= cap
        assert b.nnz == mask[b.r0:b.r1, b.c0:b.c1].sum() and b.area == h * w
        assert b.density == b.nnz / b.area >= rho_min
        # Stopped because neither one-step growth is allowed.
        if w < cap and b.c1 < m:
            assert mask[b.r0:b.r1, b.c0:b.c1 + 1].sum() / (h * (w + 1)) < rho_min
        if h < cap and b.r1 < n:
            assert mask[b.r0:b.r1 + 1, b.c0:b.c1].sum() / ((h + 1) * w) < rho_min
        first[b.r0:b.r1, b.c0:b.c1] = k
    nonzeros = np.flatnonzero(mask)
    first = first.ravel()[nonzeros]
    assert (first < len(blocks)).all()  # every nonzero covered
    # Block k is seeded at the first nonzero (row-major) that no earlier block covers:
    # seeds ascend, and every nonzero before seed k is covered by a block before k.
    seeds = np.array([b.r0 * m + b.c0 for b in blocks], dtype=np.int64)
    assert (np.diff(seeds) > 0).all() and mask.ravel()[seeds].all()
    assert (first[np.searchsorted(nonzeros, seeds)] == np.arange(len(blocks))).all()
    assert (first < np.searchsorted(seeds, nonzeros, side="right")).all()

    stats = blocks_stats(blocks, int(mask.sum()))
    total = sum(b.nnz for b in blocks)
    area = sum(b.area for b in blocks)
    assert stats == {
        "blocks": len(blocks), "covered_nnz": total, "area": area,
        "fill": total / area if area else 0.0,
        "coverage": total / mask.sum() if mask.any() else 0.0,
    }
    assert stats["coverage"] >= 1.0 or not mask.any()


RHO = st.sampled_from([0.0, 0.3, 0.5, 0.6, 0.9, 1.0]) | st.floats(0.0, 1.0)
CAP = st.sampled_from([1, 2, 3, 8, 1024])


@SETTINGS
@given(dense_masks(max_n=60, square=False), RHO, CAP)
def test_grow_blocks_matches_seed(mask, rho_min, cap):
    blocks = grow_blocks(sp.csr_matrix(mask), rho_min, cap)
    assert [(b.r0, b.r1, b.c0, b.c1, b.nnz) for b in blocks] == grow_reference(mask, rho_min, cap)
    check_blocks(mask, blocks, rho_min, cap)


@SETTINGS
@given(dense_masks(), RHO, CAP)
def test_grow_blocks_invariants(mask, rho_min, cap):
    check_blocks(mask, grow_blocks(sp.csr_matrix(mask), rho_min, cap), rho_min, cap)


@pytest.mark.parametrize("graph", [
    masks.vision_longformer((12, 12), window=5), masks.vision_longformer((9, 5), n_global=2),
    masks.regionvit((14, 14), window=7), masks.dynamicvit((12, 12), keep=0.343),
    masks.vision_longformer((12, 12), mode="sliding_chunk", chunk=3),
], ids=lambda g: f"{g.name}-{g.n_tokens}")
@pytest.mark.parametrize("rho_min, cap", [(0.6, 1024), (0.9, 16), (1.0, 1024)])
def test_grow_blocks_patterns(graph, rho_min, cap):
    check_blocks(graph.adjacency.toarray(), grow_blocks(graph.adjacency, rho_min, cap),
                 rho_min, cap)


def test_grow_blocks_exact_shapes():
    # Dense 300 x 300 capped at 128: a 3 x 3 grid of blocks, ragged at the far edges.
    blocks = grow_blocks(masks.dense(300).adjacency, rho_min=0.6, cap=128)
    assert [(b.r0, b.r1, b.c0, b.c1) for b in blocks] == [
        (r, min(r + 128, 300), c, min(c + 128, 300)) for r in (0, 128, 256) for c in (0, 128, 256)]
    assert blocks_stats(blocks, 300 * 300) == {
        "blocks": 9, "covered_nnz": 90000, "area": 90000, "fill": 1.0, "coverage": 1.0}
    # Cliques come out exactly at rho_min = 1; the identity as 1 x 1 blocks.
    sizes = [3, 1, 5, 2]
    cliques = sp.block_diag([np.ones((s, s)) for s in sizes], format="csr")
    starts = np.cumsum([0, *sizes])
    assert [(b.r0, b.r1, b.c0, b.c1) for b in grow_blocks(cliques, rho_min=1.0)] == [
        (s, e, s, e) for s, e in itertools.pairwise(starts)]
    assert len(grow_blocks(sp.identity(7, format="csr"))) == 7


def test_grow_blocks_overlap_counts_twice():
    # The second block, seeded at (1, 0), grows over the first block's nonzero at (1, 1).
    mask = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    blocks = grow_blocks(sp.csr_matrix(mask), rho_min=0.6)
    assert [(b.r0, b.r1, b.c0, b.c1, b.nnz) for b in blocks] == [(0, 3, 1, 2, 2), (1, 2, 0, 3, 2)]
    assert blocks_stats(blocks, 3)["coverage"] == pytest.approx(4 / 3)


def test_grow_blocks_empty_and_input_untouched():
    assert grow_blocks(sp.csr_matrix((5, 5), dtype=bool)) == []
    assert blocks_stats([], 0) == {
        "blocks": 0, "covered_nnz": 0, "area": 0, "fill": 0.0, "coverage": 0.0}
    odd = sp.csr_matrix((np.array([1.0, 0.0]), np.array([2, 0]), np.array([0, 2, 2])),
                        shape=(2, 3))
    assert [(b.r0, b.c0, b.nnz) for b in grow_blocks(odd, rho_min=1.0)] == [(0, 2, 1)]
    assert odd.indices.tolist() == [2, 0] and odd.data.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("kwargs", [
    {"rho_min": -0.1}, {"rho_min": 1.5}, {"rho_min": float("nan")}, {"cap": 0}, {"cap": -4},
])
def test_grow_blocks_bad_arguments(kwargs):
    with pytest.raises(SparseVitError):
        grow_blocks(sp.identity(4, format="csr"), **kwargs)


def test_padding_rows_are_free():
    """Padding rows don't break full or column tiles and take the column pattern."""
    adj = np.zeros((64, 64), bool)
    adj[0:10, 0:16] = True          # block 0: rows 0-9 full over cols 0-15, 10-15 padding
    adj[16:20, 0:16] = True         # block 1: rows 16-19 full over cols 0-15 ...
    adj[16:20, [17, 20]] = True     # ... and cols 17, 20 only in the next key block
    valid = np.ones(64, bool)
    valid[10:16] = valid[20:32] = False
    ts = extract_tiles(sp.csr_matrix(adj), (16, 16), row_valid=valid)
    assert ts.full.tolist() == [True, True, False]
    assert ts.cols.tolist() == [False, False, True]
    col_bits = ts.bitmasks[ts.mask_id[2]].view(np.uint32)[:, 0]
    assert col_bits.tolist() == [(1 << 1) | (1 << 4)] * 16  # padding rows copy rows 16-19
    plain = extract_tiles(sp.csr_matrix(adj), (16, 16))
    assert not plain.full.any() and not plain.cols.any()  # without row_valid, empty rows count
    with pytest.raises(SparseVitError, match="padding rows must be empty"):
        extract_tiles(sp.csr_matrix(adj), (16, 16), row_valid=~valid)


@SETTINGS
@given(dense_masks())
def test_tiles_in_small_chunks_match_brute_force(mask):
    """Chunk boundaries (query blocks grouped by entry count) change nothing."""
    import sparsevit.blocks as blocks_mod

    saved = blocks_mod.CHUNK_ENTRIES
    blocks_mod.CHUNK_ENTRIES = 7
    try:
        for bm, bn in ((16, 16), (32, 64)):
            check_tiles(mask, bm, bn)
    finally:
        blocks_mod.CHUNK_ENTRIES = saved


def _clique(n: int, lo: int, hi: int) -> sp.csr_matrix:
    """Tokens [lo, hi) attend each other; every other token only itself."""
    adj = np.eye(n, dtype=bool)
    adj[lo:hi, lo:hi] = True
    return sp.csr_matrix(adj)


@pytest.mark.parametrize(("n", "lo", "hi", "tile"), [
    (300, 0, 150, (32, 32)),    # the key range ends inside a tile (DynamicViT's clique)
    (300, 20, 200, (32, 64)),   # ... and starts inside one
    (256, 0, 256, (64, 64)),    # all dense, aligned
    (250, 0, 250, (16, 32)),    # all dense, the last tiles cut by the sequence end
])
def test_dense_spans_cover_interior_blocks_of_a_clique(n, lo, hi, tile) -> None:
    tiles = extract_tiles(_clique(n, lo, hi), tile)
    spans = dense_spans(tiles, min_rows=2, min_keys=2)
    bm = tile[0]
    # Blocks wholly inside the clique (a block cut by the sequence end stays with the kernel).
    assert spans.tolist() == [[-(-lo // bm) * bm, hi // bm * bm, lo, hi]]
    # Every row of the span attends exactly its key range.
    dense = tiles.dense_mask()
    r0, r1, c0, c1 = spans[0]
    assert dense[r0:r1, c0:c1].all() and dense[r0:r1].sum() == (r1 - r0) * (c1 - c0)


def test_dense_spans_size_limits_and_none_in_sparse_graphs() -> None:
    tiles = extract_tiles(_clique(300, 0, 150), (32, 32))
    assert dense_spans(tiles, min_rows=129, min_keys=1).shape == (0, 4)
    assert dense_spans(tiles, min_rows=1, min_keys=151).shape == (0, 4)
    # Blocks of tokens attending only themselves (a diagonal) are no range; nor are windows.
    assert dense_spans(tiles, 1, 1).shape[0] == 1
    vl = masks.vision_longformer((16, 16), window=5)
    assert dense_spans(extract_tiles(vl.matrix, (16, 16)), 2, 2).shape == (0, 4)


def test_self_only_spans_find_blocks_of_rows_attending_themselves() -> None:
    """Whole query blocks whose every row attends itself alone, as row runs; a block with
    an extra key, or a row attending nothing, stays tiled. The last block may be ragged."""
    n = 70
    eye = np.eye(n, dtype=bool)
    assert self_only_spans(sp.csr_matrix(eye), 32).tolist() == [[0, 70]]
    extra = eye.copy()
    extra[40, 41] = True  # block 1 is not self-only
    assert self_only_spans(sp.csr_matrix(extra), 32).tolist() == [[0, 32], [64, 70]]
    empty = eye.copy()
    empty[5, 5] = False  # a row with no keys: its output must be zero, not v
    assert self_only_spans(sp.csr_matrix(empty), 32).tolist() == [[32, 70]]
    shifted = np.roll(eye, 1, axis=1)  # one key per row, but not itself
    assert self_only_spans(sp.csr_matrix(shifted), 32).size == 0
    assert self_only_spans(sp.csr_matrix((0, 0), dtype=bool), 32).size == 0


def test_self_only_spans_of_a_factored_graph() -> None:
    """DynamicViT's graph is a biclique (kept tokens) beside a diagonal remainder (pruned
    ones): the pruned tokens' blocks are found without expanding the biclique."""
    g = masks.dynamicvit((8, 8), keep=0.5)
    dense_rows = g.adjacency.toarray()
    own = (dense_rows.sum(axis=1) == 1) & np.diag(dense_rows)
    for bm in (1, 4):
        spans = self_only_spans(g.matrix, bm)
        got = np.zeros(g.n_tokens, bool)
        for r0, r1 in spans.tolist():
            got[r0:r1] = True
        rows = np.ones(-(-g.n_tokens // bm) * bm, bool)  # rows past the end count as own
        rows[:g.n_tokens] = own
        expected = np.repeat(rows.reshape(-1, bm).all(axis=1), bm)[:g.n_tokens]
        assert np.array_equal(got, expected) and got.any()
