"""T2: cut a (reordered) attention graph into BM x BN tiles for the block-sparse kernel.

A tile is *full* when all BM*BN of its entries are attended (the kernel then does no
mask work at all) and *partial* otherwise; a partial tile carries a packed bitmask.
A partial tile whose rows all attend the same columns is also a *column* tile: the
kernel then reads one row of its bitmask instead of expanding all BM rows (a global
key's column, a padded window). Tiles that cross the end of the sequence in key columns
are never full, so the kernel's bounds handling lives in the bitmask too.

Rows may be marked as padding (``row_valid``): their entries are empty and nobody reads
their output, so they don't stop a tile from being full or a column tile, and their
bits copy the tile's column pattern.

``grow_blocks`` is the alternative to fixed tiles: seed 000's greedy, variable-size,
nearly dense rectangles.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from sparsevit.errors import SparseVitError
from sparsevit.graph import Adjacency, Biclique, FactoredAdjacency

TILE_SIZES = (16, 32, 64, 128)
WORD_BITS = 32


@dataclass(frozen=True)
class TileSet:
    """Non-empty tiles grouped by query block (a CSR over query blocks).

    Tiles of query block ``i`` are ``row_ptr[i]:row_ptr[i+1]``, ascending in
    ``col_block``. ``mask_id[t]`` indexes ``bitmasks`` for partial tiles (-1 for full).
    ``bitmasks[m, i, k]`` bit ``b`` is entry (row ``i``, column ``32*k + b``) of the tile.
    ``cols[t]``: partial tile whose rows all share row 0's bits (a column tile).
    A *census* (``extract_tiles(..., census=True)``) keeps row 0 of each bitmask only:
    every flag and count, and the column tiles' patterns, in 1/BM of the memory.
    """

    bm: int
    bn: int
    n_tokens: int
    row_ptr: np.ndarray
    col_block: np.ndarray
    nnz: np.ndarray
    full: np.ndarray
    mask_id: np.ndarray
    bitmasks: np.ndarray
    cols: np.ndarray | None = None  # None: no column tiles

    def __post_init__(self) -> None:
        if self.cols is None:
            object.__setattr__(self, "cols", np.zeros(self.col_block.shape[0], bool))

    @property
    def n_tiles(self) -> int:
        return int(self.col_block.shape[0])

    @property
    def n_query_blocks(self) -> int:
        return int(self.row_ptr.shape[0] - 1)

    @property
    def n_key_blocks(self) -> int:
        return -(-self.n_tokens // self.bn)

    @property
    def words_per_row(self) -> int:
        return -(-self.bn // WORD_BITS)

    @property
    def is_census(self) -> bool:
        return self.bitmasks.shape[1] != self.bm

    def stats(self) -> dict[str, Any]:
        """Tiles touched, fill (useful / computed entries) and density of the graph."""
        useful = int(self.nnz.sum())
        computed = self.n_tiles * self.bm * self.bn
        n_full = int(self.full.sum())
        n_cols = int(self.cols.sum())
        return {
            "tile": f"{self.bm}x{self.bn}",
            "tiles": self.n_tiles,
            "full": n_full,
            "column": n_cols,
            "partial": self.n_tiles - n_full - n_cols,
            "tiles_frac": self.n_tiles / (self.n_query_blocks * self.n_key_blocks),
            "fill": useful / computed if computed else 0.0,
            "density": useful / float(self.n_tokens) ** 2,
        }

    def dense_mask(self) -> np.ndarray:
        """The attended entries as a dense bool matrix (tests and small graphs only)."""
        if self.is_census:
            raise SparseVitError("a tile census has no partial tiles' rows: extract the tiles")
        n = self.n_tokens
        out = np.zeros((self.n_query_blocks * self.bm, self.n_key_blocks * self.bn), bool)
        bit = np.arange(self.bn)
        for qb in range(self.n_query_blocks):
            for t in range(self.row_ptr[qb], self.row_ptr[qb + 1]):
                rows = slice(qb * self.bm, (qb + 1) * self.bm)
                cols = slice(self.col_block[t] * self.bn, (self.col_block[t] + 1) * self.bn)
                if self.full[t]:
                    out[rows, cols] = True
                else:
                    words = self.bitmasks[self.mask_id[t]].view(np.uint32)
                    out[rows, cols] = (words[:, bit // WORD_BITS] >> (bit % WORD_BITS)) & 1
        return out[:n, :n]


def dense_spans(tiles: TileSet, min_rows: int = 1, min_keys: int = 1) -> np.ndarray:
    """Runs of query blocks whose rows all attend one contiguous key range, every key of
    it: (k, 4) int64 rows [r0, r1) and keys [c0, c1) in positions (rows clipped to
    ``n_tokens``), at least ``min_rows`` x ``min_keys``. Such a rectangle is plain dense
    attention, which a dense kernel can run (``sv.plan(..., dense=...)``).

    A block qualifies when its tiles cover consecutive key blocks, all full except the
    two ends, which may be column tiles whose shared bits run from the interior edge (the
    key range starts or ends inside them): DynamicViT's kept-token clique ends mid-tile.
    """
    counts = np.diff(tiles.row_ptr)
    busy = np.flatnonzero(counts > 0)
    if busy.size == 0:
        return np.zeros((0, 4), np.int64)
    starts = tiles.row_ptr[busy]
    kmin = np.minimum.reduceat(tiles.col_block, starts)
    kmax = np.maximum.reduceat(tiles.col_block, starts)
    n_full = np.add.reduceat(tiles.full.astype(np.int64), starts)
    n_ends = np.minimum(counts[busy], 2)
    maybe = (kmax - kmin + 1 == counts[busy]) & (counts[busy] - n_full <= n_ends)
    span = np.full((tiles.n_query_blocks, 2), -1, np.int64)
    bit = np.arange(tiles.bn)
    for qb, k0, k1 in zip(busy[maybe], kmin[maybe], kmax[maybe], strict=True):
        c0, c1 = int(k0) * tiles.bn, (int(k1) + 1) * tiles.bn
        ok = True
        for t in range(tiles.row_ptr[qb], tiles.row_ptr[qb + 1]):
            if tiles.full[t]:
                continue
            words = tiles.bitmasks[tiles.mask_id[t], 0].view(np.uint32)
            on = ((words[bit // WORD_BITS] >> (bit % WORD_BITS)) & 1).astype(bool)
            n_on = int(on.sum())
            if not tiles.cols[t] or n_on == 0:
                ok = False
            elif tiles.col_block[t] == k1 and on[:n_on].all():  # the range ends inside
                c1 = int(k1) * tiles.bn + n_on
            elif tiles.col_block[t] == k0 and k0 != k1 and on[tiles.bn - n_on:].all():
                c0 = (int(k0) + 1) * tiles.bn - n_on  # ... or starts inside
            else:
                ok = False
        if ok:
            span[qb] = (c0, c1)
    runs = []
    qb = 0
    while qb < tiles.n_query_blocks:
        end = qb + 1
        if span[qb, 0] >= 0:
            while end < tiles.n_query_blocks and (span[end] == span[qb]).all():
                end += 1
            r0, r1 = qb * tiles.bm, min(end * tiles.bm, tiles.n_tokens)
            c0, c1 = (int(c) for c in span[qb])
            if r1 - r0 >= min_rows and c1 - c0 >= min_keys:
                runs.append((r0, r1, c0, c1))
        qb = end
    return np.asarray(runs, np.int64).reshape(-1, 4)


def self_only_spans(adjacency: Adjacency | sp.spmatrix, bm: int) -> np.ndarray:
    """Runs of BM-row query blocks whose every row attends itself alone: (k, 2) int64 rows
    [r0, r1), the last clipped to N. Softmax over a single key is exactly 1, so such a
    row's output is its own value row: a copy, not attention (DynamicViT's pruned
    tokens). A padding row attends nothing, so its block does not qualify. Of a
    ``FactoredAdjacency`` only the remainder's diagonal entries count (a biclique holding a
    row's only key leaves the block tiled).
    """
    if isinstance(adjacency, FactoredAdjacency):
        csr, row_nnz = adjacency.remainder, adjacency.row_nnz()
    else:
        csr = _canonical(adjacency)
        row_nnz = np.diff(csr.indptr)
    n = csr.shape[0]
    one_entry = np.diff(csr.indptr) == 1  # in the remainder, for a factored graph
    first = np.zeros(n, np.int64)
    first[one_entry] = csr.indices[csr.indptr[:-1][one_entry]]
    own = (row_nnz == 1) & one_entry & (first == np.arange(n))
    n_qb = -(-n // bm)
    rows = np.ones(n_qb * bm, bool)  # rows past the end: nobody reads them
    rows[:n] = own
    return block_runs(rows.reshape(n_qb, bm).all(axis=1), bm, n)


def block_runs(blocks: np.ndarray, bm: int, n: int) -> np.ndarray:
    """Runs of consecutive True query blocks (bool per block) as (k, 2) int64 rows
    [r0, r1), the last clipped to ``n``."""
    qbs = np.flatnonzero(blocks)
    if qbs.size == 0:
        return np.zeros((0, 2), np.int64)
    starts = np.flatnonzero(np.diff(qbs, prepend=-2) != 1)
    ends = qbs[np.append(starts[1:], qbs.size) - 1]
    return np.stack([qbs[starts] * bm, np.minimum((ends + 1) * bm, n)], axis=1).astype(np.int64)


def parse_tile(spec: str | tuple[int, int]) -> tuple[int, int]:
    """'64x64' or (64, 64) -> (64, 64), each side one of TILE_SIZES."""
    if isinstance(spec, str):
        parts = spec.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise SparseVitError(f"tile must look like 64x64, got {spec!r}")
        spec = (int(parts[0]), int(parts[1]))
    try:
        bm, bn = spec
    except (TypeError, ValueError):
        raise SparseVitError(f"tile must be two sides, got {spec!r}") from None
    if bm not in TILE_SIZES or bn not in TILE_SIZES:
        raise SparseVitError(f"tile sides must be in {TILE_SIZES}, got {bm}x{bn}")
    return int(bm), int(bn)


# Entries handled per pass of extract_tiles: keeps its temporaries in the tens of MB
# whatever the graph (a dense 5,600-token block alone has 31M entries).
CHUNK_ENTRIES = 1 << 22


def extract_tiles(adjacency: Adjacency | sp.spmatrix, tile: str | tuple[int, int] = (64, 64),
                  row_valid: np.ndarray | None = None, census: bool = False) -> TileSet:
    """All non-empty BM x BN tiles of ``adjacency``, with full / column flags and bitmasks.

    ``row_valid`` (bool per row, default all): rows marked False are padding, whose
    entries must be empty; they count as matching any pattern (see the module doc).
    A ``FactoredAdjacency`` gives the same tiles as its CSR without expanding its
    bicliques: a biclique's bits in a tile are its row bits times its column bits there.
    ``census``: keep row 0 of each partial tile's bitmask only (see ``TileSet``), what a
    scheduler weighing tile shapes needs; a dense graph's full bitmasks take GBs to build.
    """
    bm, bn = parse_tile(tile)
    if isinstance(adjacency, FactoredAdjacency):
        adj, parts = adjacency.remainder, adjacency.bicliques
        row_nnz = adjacency.row_nnz()
    else:
        adj, parts = _canonical(adjacency), ()
        row_nnz = np.diff(adj.indptr)
    if adj.shape[0] != adj.shape[1]:
        raise SparseVitError(f"adjacency must be square, got shape {adj.shape}")
    n = adj.shape[0]
    n_qb = -(-n // bm)
    valid = np.ones(n, bool) if row_valid is None else np.asarray(row_valid, bool)
    if valid.shape != (n,) or row_nnz[~valid].any():
        raise SparseVitError("row_valid needs one flag per row, and padding rows must be empty")
    # Rows past the end still count against fullness; only padding rows are free.
    needed_rows = bm - np.bincount(np.flatnonzero(~valid) // bm, minlength=n_qb)
    # Query blocks in chunks of about CHUNK_ENTRIES entries (a block is never split).
    entries = np.concatenate([[0], np.cumsum(row_nnz)])
    block_ends = entries[np.minimum(np.arange(1, n_qb + 1) * bm, n)]
    cuts = np.unique(np.searchsorted(block_ends, np.arange(1, block_ends[-1] // CHUNK_ENTRIES + 1)
                                     * CHUNK_ENTRIES) + 1) if n_qb else np.zeros(0, np.int64)
    bounds = np.unique(np.concatenate([[0], cuts[cuts < n_qb], [n_qb]]))
    tiled = [_TiledBiclique.of(b, n, bm, bn) for b in parts if b.nnz]
    rows_of = (_block_rows(valid, bm), _block_rows(np.ones(n, bool), bm))
    spans = list(itertools.pairwise(bounds.tolist()))

    def chunk(q0: int, q1: int) -> _Chunk:
        return _chunk_tiles(adj, tiled, q0, q1, bm, bn, needed_rows)

    # Two passes: every chunk's tiles, then the partial tiles' bits straight into one
    # array. A dense graph's bitmasks reach GBs: gathering them per chunk would page that
    # memory in twice. A single chunk keeps its entries between the passes.
    firsts = [chunk(*spans[0])] if len(spans) == 1 else [chunk(q0, q1).tiles_only()
                                                         for q0, q1 in spans]
    qb, kb, counts, full = (np.concatenate([c[i] for c in firsts]) for i in range(4))
    kept_rows, nw = (1 if census else bm), -(-bn // WORD_BITS)
    ends = np.cumsum([0] + [int((~c.full).sum()) * kept_rows * nw for c in firsts])
    words = np.zeros(int(ends[-1]), np.uint32)
    col_tiles = np.concatenate([
        _chunk_bits(c if c.rows is not None else chunk(q0, q1), tiled, bm, bn, rows_of,
                    words[a:b], census)
        for c, (q0, q1), a, b in zip(firsts, spans, ends[:-1], ends[1:], strict=True)])
    row_ptr = np.zeros(n_qb + 1, dtype=np.int32)
    np.cumsum(np.bincount(qb, minlength=n_qb), out=row_ptr[1:])
    partial = np.flatnonzero(~full)
    mask_id = np.full(qb.shape[0], -1, dtype=np.int32)
    mask_id[partial] = np.arange(partial.shape[0], dtype=np.int32)
    bitmasks = words.view(np.int32).reshape(partial.shape[0], kept_rows, nw)
    cols_flag = np.zeros(qb.shape[0], bool)
    cols_flag[partial] = col_tiles
    return TileSet(bm, bn, n, row_ptr, kb.astype(np.int32), counts.astype(np.int32), full,
                   mask_id, bitmasks, cols_flag)


@dataclass(frozen=True)
class _TiledBiclique:
    """A biclique cut along tile boundaries: its rows per query block, its packed column
    words per key block, and the blocks it touches."""

    row_words: np.ndarray  # (query blocks, BM) uint32: all ones on its rows, else 0
    row_count: np.ndarray  # per query block
    col_words: np.ndarray  # (key blocks, words per row) uint32
    col_count: np.ndarray  # per key block
    key_blocks: np.ndarray  # key blocks holding a column

    @classmethod
    def of(cls, b: Biclique, n: int, bm: int, bn: int) -> _TiledBiclique:
        member = np.zeros(n, bool)
        member[b.rows] = True
        row_bits = _block_rows(member, bm)
        n_kb, nw = -(-n // bn), -(-bn // WORD_BITS)
        words = np.zeros(n_kb * nw, np.uint32)
        slot = (b.cols // bn) * nw + (b.cols % bn) // WORD_BITS
        bits = np.left_shift(np.uint32(1), (b.cols % bn % WORD_BITS).astype(np.uint32))
        starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]]))
        words[slot[starts]] = np.bitwise_or.reduceat(bits, starts)
        col_count = np.bincount(b.cols // bn, minlength=n_kb)
        return cls(row_bits * np.uint32(0xFFFFFFFF), row_bits.sum(axis=1),
                   words.reshape(n_kb, nw), col_count,
                   np.flatnonzero(col_count))

    def tiles(self, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
        """(query block, key block) of its tiles in query blocks [q0, q1), in that order."""
        qbs = q0 + np.flatnonzero(self.row_count[q0:q1])
        return (np.repeat(qbs, self.key_blocks.shape[0]),
                np.tile(self.key_blocks, qbs.shape[0]))


class _Chunk(NamedTuple):
    """The non-empty tiles of a run of query blocks, in (query block, key block) order;
    and, until ``tiles_only``, what packing their bits needs: each entry of the remainder
    (chunk-relative row, column) and the tile rank of each entry and of each part tile."""

    qb: np.ndarray
    kb: np.ndarray
    counts: np.ndarray
    full: np.ndarray
    rows: np.ndarray | None
    cols: np.ndarray | None
    ranks: list[np.ndarray] | None
    part_tiles: list[tuple[np.ndarray, np.ndarray]] | None

    def tiles_only(self) -> _Chunk:
        return self._replace(rows=None, cols=None, ranks=None, part_tiles=None)


def _chunk_tiles(adj: sp.csr_matrix, parts: list[_TiledBiclique], q0: int, q1: int,
                 bm: int, bn: int, needed_rows: np.ndarray) -> _Chunk:
    """The tiles of query blocks [q0, q1): the entries of ``adj`` plus the tiles of the
    (disjoint) bicliques ``parts``."""
    n = adj.shape[0]
    n_kb = -(-n // bn)
    sm, sn = bm.bit_length() - 1, bn.bit_length() - 1  # sides are powers of two: shifts
    r0, r1 = q0 * bm, min(q1 * bm, n)
    cols = adj.indices[adj.indptr[r0]:adj.indptr[r1]].astype(np.int64)
    rows = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(adj.indptr[r0:r1 + 1]))
    part_tiles = [p.tiles(q0, q1) for p in parts]
    part_keys = [(pq - q0) * n_kb + pk for pq, pk in part_tiles]
    part_counts = [p.row_count[pq] * p.col_count[pk] for p, (pq, pk) in zip(parts, part_tiles,
                                                                             strict=True)]
    tile_ids, ranks, counts = _group([(rows >> sm) * n_kb + (cols >> sn), *part_keys],
                                     [None, *part_counts], (q1 - q0) * n_kb)
    qb, kb = q0 + tile_ids // n_kb, tile_ids % n_kb
    full = (counts == needed_rows[qb] * bn) & ((kb + 1) * bn <= n)
    return _Chunk(qb, kb, counts, full, rows, cols, ranks, part_tiles)


def _chunk_bits(chunk: _Chunk, parts: list[_TiledBiclique], bm: int, bn: int,
                rows_of: tuple[np.ndarray, np.ndarray], out: np.ndarray,
                census: bool) -> np.ndarray:
    """Pack the bits of the chunk's partial tiles into ``out`` (zeros: BM rows of words
    per tile, or row 0 only for a ``census``); return which are column tiles.
    ``rows_of``: per query block, its valid rows and its rows inside the sequence."""
    full, rank, rows, cols = chunk.full, chunk.ranks[0], chunk.rows, chunk.cols
    sm = bm.bit_length() - 1
    nw = -(-bn // WORD_BITS)
    partial_rank = np.cumsum(~full) - 1
    if full.any():
        keep = ~full[rank]
        rank, rows, cols = rank[keep], rows[keep], cols[keep]
    # Entries into (tile, row, word) slots. CSR rows hold sorted columns, so the entries
    # of one slot are consecutive: OR each run. In place where possible: fresh
    # temporaries of this size cost page faults.
    bits = np.left_shift(np.uint32(1), (cols & (min(bn, WORD_BITS) - 1)).astype(np.uint32))
    slot = partial_rank[rank]
    slot <<= sm
    slot += np.bitwise_and(rows, bm - 1, out=rows)
    slot *= nw
    cols &= bn - 1
    slot += np.right_shift(cols, WORD_BITS.bit_length() - 1, out=cols)
    words = np.zeros(int((~full).sum()) * bm * nw, np.uint32) if census else out
    if slot.shape[0]:
        starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]]))
        words[slot[starts]] = np.bitwise_or.reduceat(bits, starts)
    # A biclique's bits in a partial tile: its column words on each of its rows there.
    per_tile = words.reshape(-1, bm, nw)
    for p, (pq, pk), prank in zip(parts, chunk.part_tiles, chunk.ranks[1:], strict=True):
        sel = ~full[prank]
        dst = partial_rank[prank[sel]]  # increasing
        rows, cols = p.row_words[pq[sel]], p.col_words[pk[sel]]
        bits = np.empty((dst.size, bm, nw), np.uint32)
        for w in range(nw):  # word by word: numpy's inner loop then runs along BM rows
            np.bitwise_and(rows, cols[:, w:w + 1], out=bits[:, :, w])
        if dst.size and dst[-1] - dst[0] + 1 == dst.size:  # consecutive tiles: in place
            per_tile[dst[0]:dst[-1] + 1] |= bits
        else:
            per_tile[dst] |= bits
    # Column tiles while the chunk's words are still in cache.
    partial_qb = chunk.qb[~full]
    col_tiles = _column_tiles(per_tile.view(np.int32), rows_of[0][partial_qb],
                              rows_of[1][partial_qb])
    if census:
        out[:] = per_tile[:, 0].reshape(-1)
    return col_tiles


def occupied_cells(adjacency: Adjacency, ch: int, cw: int) -> np.ndarray:
    """Sorted ids (row cell * column cells + column cell) of the ``ch`` x ``cw`` cells
    holding an entry; a factored adjacency's bicliques are never expanded."""
    factored = isinstance(adjacency, FactoredAdjacency)
    csr = adjacency.remainder if factored else adjacency
    n = csr.shape[0]
    n_rc, n_cc = -(-n // ch), -(-n // cw)
    per_cell_row = np.add.reduceat(np.diff(csr.indptr), np.arange(0, n, ch))
    cells = [np.repeat(np.arange(n_rc, dtype=np.int64), per_cell_row) * n_cc
             + csr.indices // cw]
    for b in adjacency.bicliques if factored else ():
        rc, cc = np.unique(b.rows // ch), np.unique(b.cols // cw)
        cells.append((rc[:, None] * n_cc + cc[None, :]).ravel())
    cell = np.concatenate(cells)
    if n_rc * n_cc <= 1 << 26:
        return np.flatnonzero(np.bincount(cell, minlength=n_rc * n_cc))
    return np.unique(cell)


def _block_rows(valid: np.ndarray, bm: int) -> np.ndarray:
    """(query blocks, BM) row flags, False past the end of the sequence."""
    out = np.zeros(-(-valid.shape[0] // bm) * bm, bool)
    out[:valid.shape[0]] = valid
    return out.reshape(-1, bm)


def _column_tiles(bitmasks: np.ndarray, valid: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Which tiles have one bit pattern on all ``valid`` rows. That pattern is copied onto
    their padding rows (in place), so row 0 always holds a column tile's column mask."""
    first = np.argmax(valid, axis=1)
    template = bitmasks[np.arange(bitmasks.shape[0]), first]
    rows, lead = bitmasks, template
    if bitmasks.shape[2] % 2 == 0:  # compare whole rows in fewer, wider words
        rows, lead = bitmasks.view(np.int64), template.view(np.int64)
    equal = rows[:, :, 0] == lead[:, :1]
    for w in range(1, rows.shape[2]):  # word by word: numpy's inner loop runs along BM rows
        equal &= rows[:, :, w] == lead[:, w:w + 1]
    same = (equal | ~valid).all(axis=1)
    fill = same[:, None] & ~valid & present  # padding rows of column tiles
    bitmasks[fill] = np.broadcast_to(template[:, None, :], bitmasks.shape)[fill]
    return same


def _group(keys: list[np.ndarray], weights: list[np.ndarray | None],
           n_bins: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Distinct keys of all ``keys`` arrays (sorted), each array's ranks among them, and
    per distinct key the sum of ``weights`` (1 per element where None): np.unique with
    inverse and counts, in O(len) when the key range is small."""
    if n_bins > 1 << 26:  # a lookup table would cost more than sorting
        w = [np.ones(k.shape[0], np.int64) if v is None else v for k, v in
             zip(keys, weights, strict=True)]
        sizes = np.cumsum([0] + [k.shape[0] for k in keys])
        ids, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(w), minlength=ids.shape[0])
        ranks = [inverse[a:b] for a, b in itertools.pairwise(sizes)]
        return ids, ranks, counts.astype(np.int64)
    counts = sum(np.bincount(k, weights=v, minlength=n_bins) if v is not None
                 else np.bincount(k, minlength=n_bins) for k, v in zip(keys, weights,
                                                                        strict=True))
    ids = np.flatnonzero(counts)
    lookup = np.empty(n_bins, dtype=np.int64)
    lookup[ids] = np.arange(ids.shape[0])
    return ids, [lookup[k] for k in keys], np.asarray(counts)[ids].astype(np.int64)


def _canonical(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """CSR copy with sorted, unique, nonzero entries: duplicates or stored zeros would
    otherwise be counted as attended entries. The caller's matrix is left untouched (and
    returned as is when it is already canonical: nothing here writes to it)."""
    if (isinstance(adjacency, sp.csr_matrix) and adjacency.has_canonical_format
            and adjacency.data.all()):
        return adjacency
    csr = sp.csr_matrix(adjacency, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr


# ----------------------------------------------------------------- greedy dense blocks


@dataclass(frozen=True)
class DenseBlock:
    """The rectangle rows [r0, r1) x columns [c0, c1) and the nonzeros inside it."""

    r0: int
    r1: int
    c0: int
    c1: int
    nnz: int
    area: int
    density: float


def grow_blocks(adjacency: sp.spmatrix, rho_min: float = 0.6,
                cap: int = 1024) -> list[DenseBlock]:
    """Cover every nonzero with greedily grown, nearly dense rectangles (seed 000).

    Seed a 1x1 block at the first not yet covered nonzero in row-major order; grow it
    right or down by one, taking the option of larger area (right on a tie) that keeps
    density >= ``rho_min``; stop when neither does or a side would exceed ``cap``. Then
    mark the nonzeros inside covered. As in the seed, a block may overlap earlier ones
    and its ``nnz`` counts every nonzero inside it.
    """
    if not 0.0 <= rho_min <= 1.0:
        raise SparseVitError(f"rho_min must be in [0, 1], got {rho_min}")
    if cap < 1:
        raise SparseVitError(f"cap must be >= 1, got {cap}")
    csr = _canonical(adjacency)
    n_rows, n_cols = csr.shape
    csc = csr.tocsc()
    csc.sort_indices()
    # bisect on zero-copy memoryviews: a scalar search costs ~0.2 us against ~1 us for
    # np.searchsorted, and every growth step does up to four.
    r_ptr, r_ind = csr.indptr.tolist(), memoryview(csr.indices)
    c_ptr, c_ind = csc.indptr.tolist(), memoryview(csc.indices)
    covered = bytearray(csr.nnz)  # per CSR position; find(0) is a C scan
    ones = memoryview(b"\x01" * max(n_cols, 1))
    blocks: list[DenseBlock] = []
    row = 0
    pos = covered.find(0)
    while pos >= 0:
        while r_ptr[row + 1] <= pos:  # seeds move forward, so does their row
            row += 1
        r0, c0 = row, r_ind[pos]
        r1, c1 = r0 + 1, c0 + 1
        nnz = 1
        while True:
            h, w = r1 - r0, c1 - c0
            # The larger candidate area is right when h >= w (ties go right, as in the
            # seed), else down: try that one first and the other only if it fails.
            grown = False
            for right in ((True, False) if h >= w else (False, True)):
                # Growing right adds column c1 over rows [r0, r1); down adds row r1 over
                # columns [c0, c1): the same count on the CSC or the CSR arrays.
                side, other, line, end, ptr, ind, lo_b, hi_b = (
                    (w, h, c1, n_cols, c_ptr, c_ind, r0, r1) if right
                    else (h, w, r1, n_rows, r_ptr, r_ind, c0, c1))
                if side >= cap or line >= end:
                    continue
                area = h * w + other
                if (nnz + other) / area < rho_min:  # not even a full new line passes
                    continue
                lo = bisect_left(ind, lo_b, ptr[line], ptr[line + 1])
                k = bisect_left(ind, hi_b, lo, ptr[line + 1]) - lo
                if (nnz + k) / area >= rho_min:
                    c1, r1 = (c1 + 1, r1) if right else (c1, r1 + 1)
                    nnz += k
                    grown = True
                    break
            if not grown:
                break
        for r in range(r0, r1):
            hi = r_ptr[r + 1]
            lo = bisect_left(r_ind, c0, r_ptr[r], hi)
            hi = bisect_left(r_ind, c1, lo, hi)
            covered[lo:hi] = ones[: hi - lo]
        area = (r1 - r0) * (c1 - c0)
        blocks.append(DenseBlock(r0, r1, c0, c1, nnz, area, nnz / area))
        pos = covered.find(0, pos)
    return blocks


def blocks_stats(blocks: list[DenseBlock], total_nnz: int) -> dict[str, Any]:
    """Blocks, nonzeros inside them, computed area and fill (covered / area).

    ``coverage`` is covered / ``total_nnz``: 1 when blocks cover the graph exactly once,
    above 1 when overlapping blocks count shared nonzeros again.
    """
    covered = sum(b.nnz for b in blocks)
    area = sum(b.area for b in blocks)
    return {
        "blocks": len(blocks),
        "covered_nnz": covered,
        "area": area,
        "fill": covered / area if area else 0.0,
        "coverage": covered / total_nnz if total_nnz else 0.0,
    }
