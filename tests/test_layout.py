"""Padded layouts: closed groups, aligned positions, the moved adjacency."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsevit as sv
from sparsevit import layout
from sparsevit import reorder as reorder_mod


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


def test_small_groups_pack_without_padding() -> None:
    eye = sp.identity(40, dtype=bool, format="csr")  # 40 singletons: nothing to align
    g = sv.masks.from_matrix(eye)
    positions, n_pos = layout.pad_positions(g, (64, 64))
    assert n_pos == 40 and positions.tolist() == list(range(40))
