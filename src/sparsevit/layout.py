"""Padded token layout: start self-contained groups of tokens on a tile boundary.

After reordering, a graph often falls apart into consecutive groups that attend only
among themselves (RegionViT's 50-token windows, DynamicViT's kept tokens) plus a few
special tokens (Vision Longformer's global token). Where such a group straddles a tile
boundary every one of its tiles is partial; padding it to a multiple of the tile makes
its tiles full or column tiles (see ``blocks``) and often halves their number.

Runs of consecutive identical rows (the same key set: Vision Longformer's sliding chunks
after ``reorder.grouped``) are padded the same way although they are not closed. A run
padded to a tile boundary owns its query blocks, so each query block is uniform and all
its tiles are column tiles (every row holds the same bits); the same padding aligns the
key side, so each key tile is one run (a chunk's keys plus empty padding columns), which
a query block attends entirely or not at all.

``pad_positions`` gives each (reordered) token its position in a longer sequence whose
extra positions are padding: empty rows and columns. The kernel never loads or stores
a padding row when it gathers through the plan's permutation, so padding costs no
memory traffic; in the ordered form a model carries the padding rows (``Plan.permute``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparsevit.graph import (
    CLS,
    GLOBAL,
    Adjacency,
    AttentionGraph,
    FactoredAdjacency,
    move_csr,
    row_signatures,
)


def row_reach(adjacency: Adjacency) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first and last attended column; an empty row reaches only itself."""
    n = adjacency.shape[0]
    first, last = np.arange(n), np.arange(n)
    parts = [adjacency.remainder] if isinstance(adjacency, FactoredAdjacency) else [adjacency]
    csr = parts[0] if parts[0].has_sorted_indices else parts[0].sorted_indices()
    busy = np.diff(csr.indptr) > 0
    last[busy] = np.maximum(last[busy], csr.indices[csr.indptr[1:][busy] - 1])
    first[busy] = np.minimum(first[busy], csr.indices[csr.indptr[:-1][busy]])
    for b in getattr(adjacency, "bicliques", ()):
        if b.nnz:
            first[b.rows] = np.minimum(first[b.rows], b.cols[0])
            last[b.rows] = np.maximum(last[b.rows], b.cols[-1])
    return first, last


def closed_groups(adjacency: Adjacency) -> np.ndarray:
    """Start offsets of the maximal runs of consecutive tokens with no edge leaving the run
    (the diagonal blocks of a block-diagonal matrix), plus the end offset.

    A cut after token i needs no edge (r, c) with r <= i < c (rows up to i reach no
    further than i) nor c <= i < r (rows after i reach no lower than i + 1): O(N) from
    each row's first and last column, never a transpose of the nonzeros.
    """
    n = adjacency.shape[0]
    if n == 0:
        return np.zeros(1, np.int64)
    first, last = row_reach(adjacency)
    low_after = np.minimum.accumulate(first[::-1])[::-1]  # min first column of rows >= i
    cut = np.maximum.accumulate(last)[:-1] < np.arange(1, n)
    cut &= low_after[1:] > np.arange(n - 1)
    ends = np.concatenate([np.flatnonzero(cut) + 1, [n]])
    return np.concatenate([[0], ends]).astype(np.int64)


def identical_runs(adjacency: Adjacency) -> np.ndarray:
    """Start offsets of the maximal runs of consecutive rows that attend the same columns
    (by ``graph.row_signatures``), plus the end offset."""
    signatures = row_signatures(adjacency)
    if signatures.shape[0] == 0:
        return np.zeros(1, np.int64)
    starts = np.flatnonzero(signatures[1:] != signatures[:-1]) + 1
    return np.concatenate([[0], starts, [signatures.shape[0]]]).astype(np.int64)


def pad_positions(graph: AttentionGraph, tile: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(position of each token, number of positions) for tiles of ``tile``.

    The leading run of global / cls tokens becomes a block of its own (a whole tile in
    both directions), unless it lies inside a closed group smaller than the graph
    (DynamicViT's cls token in the kept-token clique): then it is one of that group's
    tokens. In the rest, every closed group (``closed_groups``) and every run
    of identical rows (``identical_runs``) that is at least half a tile long starts and
    ends on a multiple of the smaller tile side; the tokens between such edges pack
    without padding. A long run inside a long closed group thus splits it into pieces
    that each start and end on a boundary (the group's own edges stay aligned); rows
    are compared on the rest's columns only, as the lead's key tiles are apart anyway.
    """
    unit = min(tile)
    n = graph.n_tokens
    m = graph.matrix
    special = np.isin(graph.kind, (GLOBAL, CLS))
    n_lead = int(np.argmin(special)) if not special.all() else n
    if 0 < n_lead < n and closed_groups(m)[1] < n:
        n_lead = 0  # the lead belongs to a closed group (DynamicViT's cls in its clique)
    rest = (m.window(np.arange(n_lead, n)) if isinstance(m, FactoredAdjacency)
            else m[n_lead:, n_lead:].tocsr())
    # Padding goes in at the edges of long groups and long runs: the cursor is rounded up
    # there, and the tokens in between sit next to each other.
    ends = []
    for bounds in (closed_groups(rest), identical_runs(rest)):
        long = np.diff(bounds) >= unit // 2
        ends += [bounds[:-1][long], bounds[1:][long]]
    edges = n_lead + np.unique(np.concatenate(ends))
    steps = np.full(edges.shape[0], unit)
    if n_lead:
        edges, steps = np.concatenate([[n_lead], edges]), np.concatenate([[max(tile)], steps])
    shifts = np.empty(edges.shape[0] + 1, np.int64)  # padding before each stretch
    shifts[0] = shift = 0
    for i, (edge, step) in enumerate(zip(edges.tolist(), steps.tolist(), strict=True)):
        shift = -(-(edge + shift) // step) * step - edge  # token ``edge`` starts a tile
        shifts[i + 1] = shift
    stretch = np.diff(np.concatenate([[0], edges, [n]]))
    positions = np.arange(n) + np.repeat(shifts, stretch)
    return positions, n + int(shifts[-1])


def padded_adjacency(adjacency: Adjacency, positions: np.ndarray,
                     n_positions: int) -> Adjacency:
    """``adjacency`` with token i moved to ``positions[i]`` (positions increasing)."""
    if isinstance(adjacency, FactoredAdjacency):
        return adjacency.moved(positions, n_positions)
    return move_csr(sp.csr_matrix(adjacency), positions, n_positions)


def block_memory_rows(slot_token: np.ndarray, block: int, n_tokens: int) -> np.ndarray | None:
    """Per block of ``block`` positions, the memory row ``r0`` such that every real
    position ``b * block + j`` of the block holds token ``r0 + j``; None when some block
    has no such row (its tokens are not consecutive, or start past their offset).

    ``slot_token`` maps each position to its token (``n_tokens`` at a padding position).
    Where every block has one, the kernel can move a block as ``block`` consecutive rows
    from ``r0`` (a bulk copy) although the tokens are not padded in memory: the rows it
    reads at padding positions belong to other tokens, and those columns are masked
    anyway, since a padding position attends nothing and nothing attends it. A block of
    padding only gets ``n_tokens`` (past the last row).
    """
    blocks = -(-slot_token.shape[0] // block)
    padded = np.full(blocks * block, n_tokens, np.int64)
    padded[:slot_token.shape[0]] = slot_token
    padded = padded.reshape(blocks, block)
    real = padded < n_tokens
    none = np.iinfo(np.int64).max
    start = np.where(real, padded - np.arange(block), none)
    rows = start.min(axis=1)
    rows[rows == none] = n_tokens
    if (rows < 0).any() or (real & (start != rows[:, None])).any():
        return None
    return rows
