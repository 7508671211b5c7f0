"""The attention graph: a boolean CSR adjacency (query x key) plus per-token metadata.

Metadata is kept per token (kind, grid coordinate, region, original index) so that a
reordered graph carries it along by plain indexing: nothing depends on tokens sitting
at fixed positions.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
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
class AttentionGraph:
    """Who attends to whom, for one attention layer.

    ``adjacency[q, k]`` is True when query ``q`` attends to key ``k``.
    ``kind[i]`` is the token kind; ``yx[i]`` the (row, col) of a local token on
    ``grid`` (-1 for special tokens); ``region[i]`` the window a token belongs to
    (-1 when the pattern has none); ``order[i]`` the token's index in the original
    (unreordered) layout.
    """

    adjacency: sp.csr_matrix
    name: str
    grid: tuple[int, int] | None
    kind: np.ndarray
    yx: np.ndarray
    region: np.ndarray
    order: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return self.adjacency.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.adjacency.nnz)

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
    adjacency: sp.spmatrix,
    name: str,
    grid: tuple[int, int] | None = None,
    kind: np.ndarray | None = None,
    yx: np.ndarray | None = None,
    region: np.ndarray | None = None,
    order: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
) -> AttentionGraph:
    """Validate and normalise an adjacency (square, bool CSR, sorted, no explicit zeros)."""
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise SparseVitError(f"adjacency must be square, got shape {tuple(adjacency.shape)}")
    n = adjacency.shape[0]
    if n == 0:
        raise SparseVitError("adjacency is empty (0 tokens)")
    if sp.issparse(adjacency):
        _check_finite(adjacency.data, name)
    csr = sp.csr_matrix(adjacency, dtype=bool, copy=True)  # never alter the caller's matrix
    csr.eliminate_zeros()
    csr.sum_duplicates()
    csr.sort_indices()

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
    return AttentionGraph(csr, name, tuple(grid) if grid else None, kind, yx, region, order,
                          dict(params or {}))


def permute(graph: AttentionGraph, perm: np.ndarray) -> AttentionGraph:
    """Reorder tokens: new token ``i`` is old token ``perm[i]`` (rows and columns alike)."""
    perm = validate_permutation(perm, graph.n_tokens)
    adj = graph.adjacency[perm][:, perm]
    return make_graph(adj, graph.name, graph.grid, graph.kind[perm], graph.yx[perm],
                      graph.region[perm], graph.order[perm], graph.params)


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
