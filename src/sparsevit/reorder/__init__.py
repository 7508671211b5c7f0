"""T2: token reorderings that pack an attention graph's nonzeros into fewer, fuller tiles.

Every method takes an :class:`~sparsevit.graph.AttentionGraph` or a square matrix (scipy
sparse or dense; all its tokens are local) and returns a permutation: ``np.int64``
array ``perm`` where new position ``i`` holds old token ``perm[i]``, for
:func:`apply` / :func:`sparsevit.graph.permute`. Methods hold no state.

Where special tokens go, in every method except ``none`` (the identity, i.e. the input
layout as is, the baseline):

1. global and cls tokens first, in their original relative order;
2. then the local tokens, in the method's order;
3. each regional token immediately before the first local token of its region
   (``graph.region``) in that order; regional tokens of one region keep their original
   relative order, and one whose region has no local token goes right after step 1.

Clustering methods (``rcm``, ``hc``, ``ic``) see only the local-token subgraph: hub
tokens link everything and would wreck them. On a factored graph (dense bicliques, see
``sparsevit.graph``) none of them expands a biclique: ``hc`` and ``ic`` build the same
row patterns from the factors, and ``rcm`` runs on a sparse surrogate in which each
biclique's members are linked by a path in index order (connected like the biclique,
so a breadth-first search still reaches them as one group).

Geometry methods (``hilbert``, ``morton``, ``tiled``, ``grouped``) sort the local tokens
by their ``yx`` grid coordinates; for input without coordinates pass ``grid=(H, W)`` and
the local tokens are taken in raster order. ``grouped`` is ``hilbert`` with the local
tokens whose rows are identical (same key set, special keys included: Vision
Longformer's sliding chunks) brought together at their first member's place, so that
``layout.pad_positions`` can give each such run query blocks of its own. It reads rows
through ``graph.row_signatures`` (a factored graph is not expanded).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from sparsevit.errors import SparseVitError
from sparsevit.graph import (
    LOCAL,
    REGIONAL,
    Adjacency,
    AttentionGraph,
    FactoredAdjacency,
    make_graph,
    permute,
    row_signatures,
)
from sparsevit.reorder import clustering, curves

GraphLike = AttentionGraph | sp.spmatrix | sp.sparray | np.ndarray

__all__ = ["METHODS", "apply", "get", "grouped", "hc", "hilbert", "ic", "morton", "none",
           "rcm", "tiled"]


def none(graph: GraphLike) -> np.ndarray:
    """The identity: tokens stay where they are."""
    return np.arange(_as_graph(graph).n_tokens, dtype=np.int64)


def rcm(graph: GraphLike) -> np.ndarray:
    """Reverse Cuthill-McKee on the symmetrised local-token subgraph (bandwidth reduction)."""
    g = _as_graph(graph)
    adj, local = _local_adjacency(g)
    if local.shape[0] == 0:
        return _place(g, local)
    adj = _sparse_surrogate(adj)
    order = reverse_cuthill_mckee((adj + adj.T).tocsr(), symmetric_mode=True)
    return _place(g, local[order])


def hc(graph: GraphLike, *, block: int = 16, metric: str = "hamming", target_size: float = 8,
       max_neighbors: int = 64, dense_frac: float = clustering.DENSE_FRAC,
       cluster_order: str = "tree") -> np.ndarray:
    """Hierarchical clustering of query rows by their column-block patterns (seed 000).

    Rows are bitsets over ``block``-column blocks; a cluster's pattern is the OR of its
    rows. Clusters merge closest-first by ``metric`` ("hamming": size of the symmetric
    difference, or "jaccard") until the average cluster holds ``target_size`` rows.
    Candidates share a block held by at most ``dense_frac`` of the clusters; each
    cluster keeps the ``max_neighbors`` candidates sharing most blocks. Merging runs in
    vectorised rounds: a greedy matching in ascending distance, plus each unmatched
    cluster joining the merge of its nearest candidate (so a hub costs one round, not
    one per neighbour). Identical rows are grouped before any round, even when that
    overshoots ``target_size``.

    Rows sit in index order inside a cluster. ``cluster_order="tree"`` orders clusters
    by continuing the same merging above the target level and reading the dendrogram
    left to right, so similar clusters end up adjacent; ``"index"`` sorts them by their
    smallest row as seed 000 does (on grid masks that is raster-order fill).
    """
    _check(block >= 1, f"block must be >= 1, got {block}")
    _check(metric in ("hamming", "jaccard"), f"metric must be hamming or jaccard, got {metric!r}")
    _check(target_size >= 1, f"target_size must be >= 1, got {target_size}")
    _check(max_neighbors >= 1, f"max_neighbors must be >= 1, got {max_neighbors}")
    _check(0 < dense_frac <= 1, f"dense_frac must be in (0, 1], got {dense_frac}")
    _check(cluster_order in ("tree", "index"),
           f"cluster_order must be tree or index, got {cluster_order!r}")
    g = _as_graph(graph)
    adj, local = _local_adjacency(g)
    if local.shape[0] == 0:
        return _place(g, local)
    order = clustering.hc_order(adj, block=int(block), metric=metric, target_size=target_size,
                                max_neighbors=int(max_neighbors), dense_frac=dense_frac,
                                cluster_order=cluster_order)
    return _place(g, local[order])


def ic(graph: GraphLike, *, block: int = 16, tau: float = 0.6, expand_rounds: int = 2,
       dense_frac: float = clustering.DENSE_FRAC) -> np.ndarray:
    """Iterative clustering of query rows by their column-block patterns (seed 000).

    Seeds are taken in natural order (the first row not yet clustered). In each of
    ``expand_rounds`` rounds the rows not yet clustered that share a block (held by at
    most ``dense_frac`` of the distinct rows) with the cluster pattern are candidates;
    those within Jaccard distance ``tau`` of the pattern as it stood at the start of the
    round join and widen it (seed 000 updated it after every join). Clusters follow in
    seed order, rows in index order inside each. Cost grows with the number of clusters
    (one vectorised step per seed), so unstructured matrices are the slow case.
    """
    _check(block >= 1, f"block must be >= 1, got {block}")
    _check(0 <= tau <= 1, f"tau must be in [0, 1], got {tau}")
    _check(expand_rounds >= 1, f"expand_rounds must be >= 1, got {expand_rounds}")
    _check(0 < dense_frac <= 1, f"dense_frac must be in (0, 1], got {dense_frac}")
    g = _as_graph(graph)
    adj, local = _local_adjacency(g)
    if local.shape[0] == 0:
        return _place(g, local)
    order = clustering.ic_order(adj, block=int(block), tau=tau,
                                expand_rounds=int(expand_rounds), dense_frac=dense_frac)
    return _place(g, local[order])


def _along(g: AttentionGraph, grid: tuple[int, int] | None, method: str,
           key: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The local tokens sorted (stably) by ``key`` of their grid coordinates."""
    local, yx = _coordinates(g, grid, method)
    return local[np.argsort(key(yx), kind="stable")]


def hilbert(graph: GraphLike, *, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Local tokens along a Hilbert curve over the enclosing power-of-two square."""
    g = _as_graph(graph)
    return _place(g, _along(g, grid, "hilbert", curves.hilbert_key))


def morton(graph: GraphLike, *, grid: tuple[int, int] | None = None) -> np.ndarray:
    """Local tokens in Z-order (Morton) over the enclosing power-of-two square."""
    g = _as_graph(graph)
    return _place(g, _along(g, grid, "morton", curves.morton_key))


def tiled(graph: GraphLike, *, tile: tuple[int, int] = (8, 8),
          grid: tuple[int, int] | None = None) -> np.ndarray:
    """Local tokens in grid-aligned ``tile`` = (rows, cols) tiles, tiles in raster order
    and raster order inside a tile (tiles at a ragged border are smaller)."""
    _check(np.shape(tile) == (2,) and min(tile) >= 1,
           f"tile must be two positive sizes, got {tile}")
    g = _as_graph(graph)
    size = (int(tile[0]), int(tile[1]))
    return _place(g, _along(g, grid, "tiled", lambda yx: curves.tiled_key(yx, size)))


def grouped(graph: GraphLike, *, grid: tuple[int, int] | None = None) -> np.ndarray:
    """``hilbert``, then the local tokens with identical rows (the whole graph's rows,
    special columns included) moved to their first member's place in that order, members
    in Hilbert order. Without two identical rows it is exactly ``hilbert``'s order."""
    g = _as_graph(graph)
    order = _along(g, grid, "grouped", curves.hilbert_key)
    # return_index is each signature's first occurrence in Hilbert order: sorting tokens
    # stably by their group's first position keeps groups where they began.
    _, first, inverse = np.unique(row_signatures(g.matrix)[order], return_index=True,
                                  return_inverse=True)
    return _place(g, order[np.argsort(first[inverse], kind="stable")])


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "none": none, "rcm": rcm, "hc": hc, "ic": ic,
    "hilbert": hilbert, "morton": morton, "tiled": tiled, "grouped": grouped,
}


def get(name: str) -> Callable[..., np.ndarray]:
    """The reorder function called ``name``."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise SparseVitError(
            f"unknown reorder method {name!r} (choose from {', '.join(METHODS)})") from None


def apply(graph: GraphLike, perm: np.ndarray) -> AttentionGraph:
    """The graph with its tokens reordered by ``perm`` (see sparsevit.graph.permute)."""
    return permute(_as_graph(graph), perm)


# ------------------------------------------------------------------------- helpers

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SparseVitError(message)


def _as_graph(graph: GraphLike) -> AttentionGraph:
    if isinstance(graph, AttentionGraph):
        return graph
    if not (sp.issparse(graph) or isinstance(graph, np.ndarray)):
        raise SparseVitError(
            f"expected an AttentionGraph or a square matrix, got {type(graph).__name__}")
    return make_graph(graph, "matrix")


def _local_adjacency(g: AttentionGraph) -> tuple[Adjacency, np.ndarray]:
    """Adjacency among local tokens (factored when ``g`` is), and their indices in ``g``."""
    local = g.tokens_of_kind(LOCAL)
    if local.shape[0] == g.n_tokens:
        return g.matrix, local
    if isinstance(g.matrix, FactoredAdjacency):
        return g.matrix.window(local), local
    if local.shape[0] and local[-1] - local[0] + 1 == local.shape[0]:
        span = slice(int(local[0]), int(local[-1]) + 1)  # the usual layout: slicing is cheap
        return g.adjacency[span, span], local
    return g.adjacency[local][:, local], local


def _sparse_surrogate(adj: Adjacency) -> sp.csr_matrix:
    """``adj`` itself, or for a factored one its remainder plus, per biclique, its own
    diagonal entries and a path through its members in index order."""
    if not isinstance(adj, FactoredAdjacency):
        return adj
    paths = [np.union1d(b.rows, b.cols) for b in adj.bicliques]
    loops = [np.intersect1d(b.rows, b.cols, assume_unique=True) for b in adj.bicliques]
    src = np.concatenate([p[:-1] for p in paths] + loops + [np.zeros(0, np.int64)])
    dst = np.concatenate([p[1:] for p in paths] + loops + [np.zeros(0, np.int64)])
    links = sp.csr_matrix((np.ones(src.shape[0], bool), (src, dst)), shape=adj.shape)
    return (adj.remainder + links).tocsr()


def _coordinates(g: AttentionGraph, grid: tuple[int, int] | None,
                 method: str) -> tuple[np.ndarray, np.ndarray]:
    """Local token indices and their (row, col): from ``g.yx``, else raster on ``grid``."""
    local = g.tokens_of_kind(LOCAL)
    yx = g.yx[local]
    if (yx >= 0).all():
        return local, yx
    if grid is None:
        raise SparseVitError(f"{method} needs grid coordinates: pass grid=(H, W) "
                             "for a graph or matrix without them (tokens in raster order)")
    _check(np.shape(grid) == (2,) and min(grid) >= 1,
           f"grid must be two positive sizes, got {grid}")
    h, w = int(grid[0]), int(grid[1])
    _check(h * w == local.shape[0],
           f"grid {h}x{w} has {h * w} cells for {local.shape[0]} local tokens")
    return local, np.stack(np.divmod(np.arange(h * w), w), axis=1)


def _place(g: AttentionGraph, local_order: np.ndarray) -> np.ndarray:
    """Full permutation from the local tokens' order, by the placement rule above."""
    head = np.flatnonzero((g.kind != LOCAL) & (g.kind != REGIONAL))
    regional = g.tokens_of_kind(REGIONAL)
    if regional.shape[0] == 0:
        return np.concatenate([head, local_order]).astype(np.int64)
    # Sort keys: the local token at new position p gets 2p + 1, a regional token 2p for
    # its region's first local position p (-1 without one); stable sort keeps ties in order.
    n_local = local_order.shape[0]
    region = g.region.astype(np.int64)
    first_pos = np.full(max(int(region.max()), 0) + 1, n_local)
    local_region = region[local_order]
    has_region = local_region >= 0
    np.minimum.at(first_pos, local_region[has_region], np.flatnonzero(has_region))
    pos = np.where(region[regional] >= 0, first_pos[np.maximum(region[regional], 0)], n_local)
    reg_key = np.where(pos < n_local, 2 * pos, -1)
    tail = np.concatenate([local_order, regional])
    key = np.concatenate([2 * np.arange(n_local) + 1, reg_key])
    return np.concatenate([head, tail[np.argsort(key, kind="stable")]]).astype(np.int64)
