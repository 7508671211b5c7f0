"""The attention graph: a boolean adjacency (query x key) plus per-token metadata.

Metadata is kept per token (kind, grid coordinate, region, original index) so that a
reordered graph carries it along by plain indexing: nothing depends on tokens sitting
at fixed positions.

The adjacency is held as given: a CSR, or a ``FactoredAdjacency`` (all-ones bicliques
next to a sparse remainder) for patterns with large dense blocks. DynamicViT's kept
tokens form one clique whose CSR alone is 506M entries at 65k tokens; the planning path
(reorder, layout, tiles) works on the factors and ``graph.adjacency`` builds the exact
CSR only for a caller that asks for it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sparsevit.atomic import atomic_path
from sparsevit.errors import SparseVitError

# Token kinds. Everything that is not LOCAL is "special" and keeps a defined place
# when tokens are reordered (see sparsevit.reorder).
LOCAL, GLOBAL, REGIONAL, CLS = 0, 1, 2, 3
KIND_NAMES = {LOCAL: "local", GLOBAL: "global", REGIONAL: "regional", CLS: "cls"}


@dataclass(frozen=True)
class Biclique:
    """Every query in ``rows`` attends to every key in ``cols`` (sorted, unique int64)."""

    rows: np.ndarray
    cols: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.rows.shape[0]) * int(self.cols.shape[0])

    def tocsr(self, n: int) -> sp.csr_matrix:
        counts = np.zeros(n, np.int64)
        counts[self.rows] = self.cols.shape[0]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.tile(self.cols.astype(np.int32), self.rows.shape[0])
        return _csr(indices, indptr, n)


@dataclass(frozen=True)
class FactoredAdjacency:
    """An N x N boolean adjacency: the union of all-ones ``bicliques`` and a sparse
    ``remainder`` (canonical bool CSR). No entry is in two of the parts, so entry counts
    add up and tile bitmasks are ORs of the parts' bits."""

    n: int
    bicliques: tuple[Biclique, ...]
    remainder: sp.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def nnz(self) -> int:
        return int(self.remainder.nnz) + sum(b.nnz for b in self.bicliques)

    def row_nnz(self) -> np.ndarray:
        """Entries per row."""
        counts = np.diff(self.remainder.indptr)
        for b in self.bicliques:
            counts[b.rows] += b.cols.shape[0]
        return counts

    def tocsr(self) -> sp.csr_matrix:
        """The exact CSR (canonical): what every part attends, merged row by row."""
        out = self.remainder
        for b in self.bicliques:
            out = out + b.tocsr(self.n)  # bool + is a sorted row merge in scipy's C++
        return out if out is not self.remainder else out.copy()

    def permuted(self, perm: np.ndarray, inv: np.ndarray) -> FactoredAdjacency:
        """New token i is old token ``perm[i]``; ``inv`` is the inverse permutation."""
        return FactoredAdjacency(
            self.n, tuple(Biclique(np.sort(inv[b.rows]), np.sort(inv[b.cols]))
                          for b in self.bicliques),
            permute_csr(self.remainder, perm, inv))

    def moved(self, positions: np.ndarray, n_positions: int) -> FactoredAdjacency:
        """Token i moved to ``positions[i]`` (increasing) of ``n_positions``."""
        return FactoredAdjacency(
            n_positions, tuple(Biclique(positions[b.rows], positions[b.cols])
                               for b in self.bicliques),
            move_csr(self.remainder, positions, n_positions))

    def window(self, tokens: np.ndarray) -> FactoredAdjacency:
        """The sub-adjacency among ``tokens`` (sorted), renumbered 0..len-1."""
        def keep(idx: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(tokens, idx), tokens.shape[0] - 1)
            return at[tokens[at] == idx]

        parts = (Biclique(keep(b.rows), keep(b.cols)) for b in self.bicliques)
        sub = self.remainder[tokens][:, tokens].tocsr()
        sub.sort_indices()
        return FactoredAdjacency(tokens.shape[0], tuple(b for b in parts if b.nnz), sub)


Adjacency = sp.csr_matrix | FactoredAdjacency


@dataclass(frozen=True)
class AttentionGraph:
    """Who attends to whom, for one attention layer.

    ``adjacency[q, k]`` is True when query ``q`` attends to key ``k``; ``matrix`` is the
    same relation as stored (a CSR, or factored: see the module doc).
    ``kind[i]`` is the token kind; ``yx[i]`` the (row, col) of a local token on
    ``grid`` (-1 for special tokens); ``region[i]`` the window a token belongs to
    (-1 when the pattern has none); ``order[i]`` the token's index in the original
    (unreordered) layout.
    """

    matrix: Adjacency
    name: str
    grid: tuple[int, int] | None
    kind: np.ndarray
    yx: np.ndarray
    region: np.ndarray
    order: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def adjacency(self) -> sp.csr_matrix:
        """The exact bool CSR (built once from the factors when the graph is factored)."""
        m = self.matrix
        return m.tocsr() if isinstance(m, FactoredAdjacency) else m

    @property
    def n_tokens(self) -> int:
        return self.matrix.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @property
    def density(self) -> float:
        return self.nnz / float(self.n_tokens) ** 2

    @property
    def special_tokens(self) -> np.ndarray:
        """Indices of global / regional / cls tokens, in the current order."""
        return np.flatnonzero(self.kind != LOCAL)

    def tokens_of_kind(self, kind: int) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)

    def summary(self) -> dict[str, Any]:
        values, counts = np.unique(self.kind, return_counts=True)
        kinds = {KIND_NAMES[k]: int(c) for k, c in zip(values, counts, strict=True)}
        return {
            "graph": self.name,
            "tokens": self.n_tokens,
            "grid": "x".join(map(str, self.grid)) if self.grid else "-",
            "nnz": self.nnz,
            "density": round(self.density, 6),
            "kinds": ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())),
        }


def make_graph(
    adjacency: sp.spmatrix | FactoredAdjacency,
    name: str,
    grid: tuple[int, int] | None = None,
    kind: np.ndarray | None = None,
    yx: np.ndarray | None = None,
    region: np.ndarray | None = None,
    order: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
    copy: bool = True,
) -> AttentionGraph:
    """Validate and normalise an adjacency: square; a bool CSR, sorted, no explicit zeros
    (converted when it is not), or a checked ``FactoredAdjacency``. The caller's matrix is
    never altered; ``copy=False`` lets the graph share an already canonical CSR (for
    builders that hand over a matrix they made)."""
    if isinstance(adjacency, FactoredAdjacency):
        matrix: Adjacency = _checked_factors(adjacency)
    else:
        matrix = _canonical_csr(adjacency, name, copy)
    n = matrix.shape[0]

    def per_token(values: np.ndarray | None, default: np.ndarray, what: str) -> np.ndarray:
        if values is None:
            return default
        values = np.asarray(values)
        if values.shape[0] != n:
            raise SparseVitError(f"{what} has {values.shape[0]} entries for {n} tokens")
        return values

    kind = per_token(kind, np.zeros(n, np.int8), "kind").astype(np.int8, copy=False)
    yx = per_token(yx, np.full((n, 2), -1, np.int32), "yx").astype(np.int32, copy=False)
    region = per_token(region, np.full(n, -1, np.int32), "region").astype(np.int32, copy=False)
    order = per_token(order, np.arange(n, dtype=np.int64), "order").astype(np.int64, copy=False)
    return AttentionGraph(matrix, name, tuple(grid) if grid else None, kind, yx, region, order,
                          dict(params or {}))


def _check_square(shape: tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise SparseVitError(f"adjacency must be square, got shape {tuple(shape)}")
    if shape[0] == 0:
        raise SparseVitError("adjacency is empty (0 tokens)")


def _canonical_csr(adjacency: sp.spmatrix, name: str, copy: bool) -> sp.csr_matrix:
    """Bool CSR with sorted, unique, nonzero entries; only the missing steps are done."""
    if adjacency.ndim != 2:
        raise SparseVitError(f"adjacency must be square, got shape {tuple(adjacency.shape)}")
    _check_square(adjacency.shape)
    if sp.issparse(adjacency):
        _check_finite(adjacency.data, name)
    if (isinstance(adjacency, sp.csr_matrix) and adjacency.dtype == bool
            and adjacency.has_canonical_format and adjacency.data.all()):
        return adjacency.copy() if copy else adjacency
    csr = sp.csr_matrix(adjacency, dtype=bool, copy=True)  # never alter the caller's matrix
    csr.eliminate_zeros()
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def _checked_factors(m: FactoredAdjacency) -> FactoredAdjacency:
    """Parts in range, sorted and unique, and pairwise disjoint (see FactoredAdjacency)."""
    _check_square(m.shape)
    if m.remainder.shape != m.shape or not isinstance(m.remainder, sp.csr_matrix) or \
            m.remainder.dtype != bool or not m.remainder.has_canonical_format:
        raise SparseVitError(f"factored adjacency: the remainder must be a canonical "
                             f"{m.n}x{m.n} bool CSR")
    members = []
    for b in m.bicliques:
        for idx in (b.rows, b.cols):
            if (idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer)
                    or (idx.size and (idx[0] < 0 or idx[-1] >= m.n))
                    or np.any(np.diff(idx) <= 0)):
                raise SparseVitError("factored adjacency: biclique rows and columns must be "
                                     "sorted unique token indices")
        members.append((np.isin(np.arange(m.n), b.rows), np.isin(np.arange(m.n), b.cols)))
    rows = np.repeat(np.arange(m.n), np.diff(m.remainder.indptr))
    for i, (r, c) in enumerate(members):
        clash = any((r & r2).any() and (c & c2).any() for r2, c2 in members[:i])
        if clash or (r[rows] & c[m.remainder.indices]).any():
            raise SparseVitError("factored adjacency: bicliques and the remainder overlap")
    return m


_SIGNATURE_SEED = 0x5157


def row_signatures(adjacency: Adjacency) -> np.ndarray:
    """One uint64 per row: equal for rows that attend the same set of columns.

    A row's signature is the sum, wrapping modulo 2**64, of random per-column weights
    (fixed seed, so it is the same in every call and process) over its columns; an empty
    row gets 0. A factored adjacency is never expanded: its parts are disjoint, so a row's
    sum is its remainder row's plus, per biclique holding the row, the biclique's column
    sum. Different rows collide with probability about 2**-64 per pair. A collision costs
    only performance: reorderings and layouts built from signatures (``reorder.grouped``,
    ``layout.pad_positions``) move or pad tokens and never change which entries exist, so
    they stay correct, merely less compact.
    """
    n_cols = adjacency.shape[1]
    weights = np.random.default_rng(_SIGNATURE_SEED).integers(
        1, 2**64, size=n_cols, dtype=np.uint64, endpoint=False)
    factored = isinstance(adjacency, FactoredAdjacency)
    csr = adjacency.remainder if factored else adjacency
    if not (isinstance(csr, sp.csr_matrix) and csr.has_canonical_format):
        csr = _canonical_csr(sp.csr_matrix(csr), "adjacency", copy=True)  # no double counts
    signatures = _row_sums(weights, csr)
    for b in adjacency.bicliques if factored else ():
        signatures[b.rows] += weights[b.cols].sum(dtype=np.uint64)  # rows are unique
    return signatures


_SUM_CHUNK = 1 << 22  # entries per pass: a 32 MiB buffer, reused


def _row_sums(weights: np.ndarray, csr: sp.csr_matrix) -> np.ndarray:
    """Per row, the sum of ``weights`` over its columns, wrapping modulo 2**64.

    Row sums are differences of a running sum: uint64 wraps in both, so they are exact
    modulo 2**64 and an empty row gets 0 (np.add.reduceat would give a neighbour's value
    there; np.bincount works in float64 and drops bits). Rows go in passes of about
    ``_SUM_CHUNK`` entries: one nnz-long temporary (0.9 GB at 114M entries) cost 0.6 to
    5 s depending on how fast fresh memory came, a reused small one a steady 0.6 s.
    """
    n = csr.shape[0]
    indptr = csr.indptr.astype(np.int64, copy=False)
    sums = np.empty(n, np.uint64)
    running = np.zeros(min(int(indptr[-1]), _SUM_CHUNK) + 1, np.uint64)  # [0] stays 0
    row = 0
    while row < n:
        # Rows [row, stop) hold at most _SUM_CHUNK entries, or are one longer row.
        stop = int(np.searchsorted(indptr, indptr[row] + _SUM_CHUNK, "right")) - 1
        stop = min(max(stop, row + 1), n)
        lo, hi = int(indptr[row]), int(indptr[stop])
        if hi - lo >= running.shape[0]:
            running = np.zeros(hi - lo + 1, np.uint64)
        part = running[1:hi - lo + 1]
        np.take(weights, csr.indices[lo:hi], out=part, mode="clip")  # "raise" buffers
        np.cumsum(part, out=part)
        ends = indptr[row:stop + 1] - lo
        sums[row:stop] = running[ends[1:]] - running[ends[:-1]]
        row = stop
    return sums


def permute(graph: AttentionGraph, perm: np.ndarray) -> AttentionGraph:
    """Reorder tokens: new token ``i`` is old token ``perm[i]`` (rows and columns alike)."""
    perm = validate_permutation(perm, graph.n_tokens)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.shape[0])
    m = graph.matrix
    matrix = (m.permuted(perm, inv) if isinstance(m, FactoredAdjacency)
              else permute_csr(m, perm, inv))
    return AttentionGraph(matrix, graph.name, graph.grid, graph.kind[perm], graph.yx[perm],
                          graph.region[perm], graph.order[perm], dict(graph.params))


def permute_csr(csr: sp.csr_matrix, perm: np.ndarray, inv: np.ndarray) -> sp.csr_matrix:
    """A canonical CSR permuted like ``permute``: one row gather, the columns renamed
    through ``inv`` and re-sorted per row (no column fancy-indexing, no re-normalising)."""
    rows = csr[perm]
    return _csr(inv[rows.indices], rows.indptr, csr.shape[0], sort=True)


def move_csr(csr: sp.csr_matrix, positions: np.ndarray, n_positions: int) -> sp.csr_matrix:
    """A canonical CSR with token i moved to ``positions[i]`` (increasing) of
    ``n_positions``; the other positions are empty rows and columns."""
    indptr = np.zeros(n_positions + 1, np.int64)
    indptr[positions + 1] = np.diff(csr.indptr)
    return _csr(positions[csr.indices], np.cumsum(indptr), n_positions)


def _csr(indices: np.ndarray, indptr: np.ndarray, n: int, sort: bool = False) -> sp.csr_matrix:
    """An n x n all-True CSR from index arrays; rows already sorted unless ``sort``."""
    idx_type = np.int32 if max(n, int(indptr[-1])) < 2**31 else np.int64
    out = sp.csr_matrix((np.ones(indices.shape[0], bool), indices.astype(idx_type, copy=False),
                         indptr.astype(idx_type, copy=False)), shape=(n, n))
    if sort:
        out.has_sorted_indices = False
        out.sort_indices()
    return out


def validate_permutation(perm: np.ndarray, n: int) -> np.ndarray:
    perm = np.asarray(perm)
    if perm.shape != (n,) or not np.issubdtype(perm.dtype, np.integer):
        raise SparseVitError(f"permutation must be {n} integers, got shape {perm.shape}")
    seen = np.zeros(n, dtype=bool)
    if perm.min() < 0 or perm.max() >= n:
        raise SparseVitError("permutation has indices out of range")
    seen[perm] = True
    if not seen.all():
        raise SparseVitError("permutation repeats indices")
    return perm.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------- I/O
# One .npz holds the CSR arrays under scipy's own keys (so scipy.sparse.load_npz reads
# it) plus the per-token metadata and a JSON header; scipy ignores the extra keys.

_META_KEYS = ("kind", "yx", "region", "order")


def save(graph: AttentionGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` atomically to ``path`` (.npz)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise SparseVitError(f"graph files are .npz, got {path.name}")
    csr = graph.adjacency
    header = {"name": graph.name, "grid": list(graph.grid) if graph.grid else None,
              "params": graph.params}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp, format=np.array("csr"), shape=np.array(csr.shape), data=csr.data,
            indices=csr.indices, indptr=csr.indptr, header=np.array(json.dumps(header)),
            **{k: getattr(graph, k) for k in _META_KEYS},
        )
    return path


def load_npz(path: Path) -> AttentionGraph:
    """Read a graph .npz: ours (with metadata) or any scipy sparse / single dense array."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "header" in z.files:
                header = json.loads(str(z["header"]))
                adj = sp.load_npz(path)
                return make_graph(adj, header["name"], header["grid"],
                                  params=header["params"], **{k: z[k] for k in _META_KEYS})
            if "format" in z.files:
                return make_graph(sp.load_npz(path), path.stem, params={"source": path.name})
            if len(z.files) == 1:
                return from_dense(z[z.files[0]], path.stem)
            raise SparseVitError(f"{path}: not a sparse matrix .npz (keys {z.files})")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, SparseVitError):
            raise
        raise SparseVitError(f"{path}: unreadable graph file ({e})") from None


def from_dense(matrix: np.ndarray, name: str) -> AttentionGraph:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise SparseVitError(f"{name}: expected a 2-D matrix, got {matrix.ndim}-D")
    if matrix.shape[0] != matrix.shape[1]:
        raise SparseVitError(f"adjacency must be square, got shape {matrix.shape}")
    _check_finite(matrix, name)
    return make_graph(sp.csr_matrix(matrix != 0), name)


def _check_finite(values: np.ndarray, name: str) -> None:
    """NaN != 0 is True: a mask with NaN or inf would silently attend there."""
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise SparseVitError(f"{name}: the mask holds NaN or infinite values; give 0/1 or bool")
