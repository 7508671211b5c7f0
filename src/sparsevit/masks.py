"""T1: attention graphs of sparse ViTs, one small pure function per pattern.

Token layout of every pattern: special tokens (global / regional / cls) first, then the
local tokens of the ``grid`` in raster order. Graphs are built straight into canonical
CSR from per-row key rectangles (no N x N dense matrix is ever formed), or, for
DynamicViT's dense clique of kept tokens, as factors (``graph.FactoredAdjacency``).
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sparsevit.errors import SparseVitError
from sparsevit.graph import (
    CLS,
    GLOBAL,
    LOCAL,
    REGIONAL,
    AttentionGraph,
    Biclique,
    FactoredAdjacency,
    from_dense,
    load_npz,
    make_graph,
)

# DynamicViT (DeiT backbone): token pruning before blocks 4, 7 and 10 keeps rho, rho^2, rho^3.
DYNAMICVIT_KEEP = {4: 0.7, 7: 0.49, 10: 0.343}


def grid_for(resolution: tuple[int, int] | int, patch: int) -> tuple[int, int]:
    """Token grid (rows, cols) of an image of ``resolution`` (H, W) pixels at ``patch``."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    if len(resolution) != 2:
        raise SparseVitError(f"resolution must be one size or (H, W), got {resolution}")
    h, w = resolution
    if patch <= 0 or h <= 0 or w <= 0:
        raise SparseVitError(f"resolution {h}x{w} and patch {patch} must be positive")
    if h % patch or w % patch:
        raise SparseVitError(f"resolution {h}x{w} is not divisible by patch {patch}")
    return h // patch, w // patch


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or min(grid) <= 0:
        raise SparseVitError(f"grid must be two positive sizes, got {grid}")
    return int(grid[0]), int(grid[1])


def _rect_rows(grid: tuple[int, int], y0, y1, x0, x1, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted key columns for queries whose keys are the grid rectangles [y0,y1) x [x0,x1).

    Returns (counts per query, concatenated columns shifted by ``offset``). Raster order
    inside a rectangle is increasing index order, so rows come out sorted.
    """
    _, w = grid
    hh = int((y1 - y0).max())
    ww = int((x1 - x0).max())
    dy = np.arange(hh, dtype=np.int32)
    dx = np.arange(ww, dtype=np.int32)
    ys = y0[:, None, None] + dy[None, :, None]
    xs = x0[:, None, None] + dx[None, None, :]
    valid = (ys < y1[:, None, None]) & (xs < x1[:, None, None])
    cols = (ys * w + xs + offset).astype(np.int32)
    counts = valid.reshape(len(y0), -1).sum(axis=1)
    return counts, cols[valid]


def _assemble(n: int, pieces: list[tuple[np.ndarray, np.ndarray]]) -> sp.csr_matrix:
    """Concatenate per-row column lists (counts, cols) given in row order into a CSR."""
    counts = np.concatenate([c for c, _ in pieces])
    indices = np.concatenate([c for _, c in pieces]).astype(np.int32, copy=False)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    data = np.ones(indices.shape[0], dtype=bool)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def _prepend(counts: np.ndarray, cols: np.ndarray,
             head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put ``head[r]`` (columns below every column of row r) in front of each row r."""
    n_rows, k = head.shape
    new_counts = counts + k
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(new_counts, out=starts[1:])
    out = np.empty(int(starts[-1]), dtype=np.int32)
    head_pos = (starts[:-1, None] + np.arange(k)[None, :]).ravel()
    out[head_pos] = head.ravel()
    body = np.ones(out.shape[0], dtype=bool)
    body[head_pos] = False
    out[body] = cols
    return new_counts, out


def _grid_yx(grid: tuple[int, int]) -> np.ndarray:
    h, w = grid
    yy, xx = np.divmod(np.arange(h * w, dtype=np.int32), w)
    return np.stack([yy, xx], axis=1)


def _layout(n_special: int, special_kind: int, grid: tuple[int, int]):
    """Per-token kind and yx arrays for ``n_special`` special tokens followed by the grid."""
    kind = np.concatenate([np.full(n_special, special_kind, np.int8),
                           np.full(grid[0] * grid[1], LOCAL, np.int8)])
    yx = np.concatenate([np.full((n_special, 2), -1, np.int32), _grid_yx(grid)])
    return kind, yx


def vision_longformer(grid: tuple[int, int], window: int = 15, n_global: int = 1,
                      mode: str = "exact", chunk: int = 7) -> AttentionGraph:
    """Vision Longformer 2-D attention for one stage.

    ``n_global`` global tokens attend to, and are attended by, every token. In ``exact``
    mode a local token attends to the ``window`` x ``window`` square centred on it (odd
    window, 2w+1 = 15 in the released models), truncated at the image border. In
    ``sliding_chunk`` mode the grid is cut into ``chunk`` x ``chunk`` chunks and every
    token attends to its own chunk and the 8 around it.
    """
    grid = _check_grid(grid)
    h, w = grid
    if n_global < 0:
        raise SparseVitError(f"n_global must be >= 0, got {n_global}")
    yx = _grid_yx(grid)
    y, x = yx[:, 0], yx[:, 1]
    if mode == "exact":
        if window <= 0 or window % 2 == 0:
            raise SparseVitError(f"window must be a positive odd size, got {window}")
        r = window // 2
        y0, y1 = np.maximum(y - r, 0), np.minimum(y + r + 1, h)
        x0, x1 = np.maximum(x - r, 0), np.minimum(x + r + 1, w)
    elif mode == "sliding_chunk":
        if chunk <= 0:
            raise SparseVitError(f"chunk must be positive, got {chunk}")
        cy, cx = y // chunk, x // chunk
        y0, y1 = np.maximum(cy - 1, 0) * chunk, np.minimum((cy + 2) * chunk, h)
        x0, x1 = np.maximum(cx - 1, 0) * chunk, np.minimum((cx + 2) * chunk, w)
    else:
        raise SparseVitError(f"unknown Vision Longformer mode {mode!r} (exact, sliding_chunk)")
    n = n_global + h * w
    counts, cols = _rect_rows(grid, y0, y1, x0, x1, offset=n_global)
    if n_global:
        head = np.broadcast_to(np.arange(n_global, dtype=np.int32), (h * w, n_global))
        counts, cols = _prepend(counts, cols, head)
    all_cols = np.arange(n, dtype=np.int32)
    global_rows = (np.full(n_global, n, np.int64), np.tile(all_cols, n_global))
    kind, tok_yx = _layout(n_global, GLOBAL, grid)
    return make_graph(
        _assemble(n, [global_rows, (counts, cols)]), "VisionLongformer", grid, kind, tok_yx,
        params={"window": window, "n_global": n_global, "mode": mode, "chunk": chunk},
        copy=False,
    )


def regionvit(grid: tuple[int, int], window: int = 7, step: str = "local") -> AttentionGraph:
    """RegionViT regional-to-local attention.

    ``step="local"``: every ``window`` x ``window`` window of local tokens plus its one
    regional token attend among themselves (windows at a ragged border are smaller).
    ``step="regional"``: the regional tokens (one per window) attend to each other
    globally; the graph then holds only the regional grid.
    """
    grid = _check_grid(grid)
    if window <= 0:
        raise SparseVitError(f"window must be positive, got {window}")
    h, w = grid
    rh, rw = math.ceil(h / window), math.ceil(w / window)
    params = {"window": window, "step": step, "regional_grid": [rh, rw]}
    if step == "regional":
        n = rh * rw
        kind, yx = np.full(n, REGIONAL, np.int8), _grid_yx((rh, rw))
        return make_graph(sp.csr_matrix(np.ones((n, n), dtype=bool)), "RegionViT", (rh, rw),
                          kind, yx, region=np.arange(n), params=params)
    if step != "local":
        raise SparseVitError(f"unknown RegionViT step {step!r} (local, regional)")
    n_reg = rh * rw
    n = n_reg + h * w
    # Regional token r owns window r (raster order over the regional grid).
    ry, rx = np.divmod(np.arange(n_reg, dtype=np.int32), rw)
    reg_rect = (ry * window, np.minimum((ry + 1) * window, h),
                rx * window, np.minimum((rx + 1) * window, w))
    yx = _grid_yx(grid)
    y, x = yx[:, 0], yx[:, 1]
    local_region = (y // window) * rw + x // window
    loc_rect = tuple(r[local_region] for r in reg_rect)
    pieces = []
    for rect, owner in ((reg_rect, np.arange(n_reg)), (loc_rect, local_region)):
        counts, cols = _rect_rows(grid, *rect, offset=n_reg)
        # The regional token's index is below every local index: it goes first.
        pieces.append(_prepend(counts, cols, owner[:, None].astype(np.int32)))
    kind, tok_yx = _layout(n_reg, REGIONAL, grid)
    region = np.concatenate([np.arange(n_reg), local_region]).astype(np.int32)
    return make_graph(_assemble(n, pieces), "RegionViT", grid, kind, tok_yx, region,
                      params=params, copy=False)


def dynamicvit(grid: tuple[int, int], keep: float = 0.343, seed: int = 0,
               keep_mask: np.ndarray | None = None) -> AttentionGraph:
    """DynamicViT attention policy after pruning (DeiT: the cls token plus the grid).

    Kept tokens (and the always-kept cls token) attend to every kept token; a dropped
    token attends to itself only. Which tokens are kept: ``keep_mask`` (bool, grid shape
    or flat) if given, else the top ``max(1, round(keep * tokens))`` of a seeded random score, so
    masks of decreasing ``keep`` with the same seed are nested like the pruning stages
    (see ``DYNAMICVIT_KEEP``).
    """
    grid = _check_grid(grid)
    hw = grid[0] * grid[1]
    if keep_mask is not None:
        kept = np.asarray(keep_mask, dtype=bool).reshape(-1)
        if kept.shape[0] != hw:
            raise SparseVitError(f"keep_mask has {kept.shape[0]} entries for a {grid} grid")
        keep = float(kept.mean())
        source = "keep_mask"
    else:
        if not 0.0 < keep <= 1.0:
            raise SparseVitError(f"keep ratio must be in (0, 1], got {keep}")
        score = np.random.default_rng(seed).random(hw)
        n_keep = max(1, round(keep * hw))
        kept = np.zeros(hw, dtype=bool)
        kept[np.argsort(-score, kind="stable")[:n_keep]] = True
        source = f"seeded score (seed={seed})"
    n = 1 + hw
    kept_all = np.concatenate([[True], kept])
    # One clique (the cls token and the kept tokens) plus the dropped tokens' self loops.
    members = np.flatnonzero(kept_all)
    dropped = np.flatnonzero(~kept_all)
    indptr = np.zeros(n + 1, np.int32)
    indptr[dropped + 1] = 1
    loops = sp.csr_matrix((np.ones(dropped.shape[0], bool), dropped.astype(np.int32),
                           np.cumsum(indptr, dtype=np.int32)), shape=(n, n))
    kind, yx = _layout(1, CLS, grid)
    return make_graph(
        FactoredAdjacency(n, (Biclique(members, members),), loops), "DynamicViT", grid, kind,
        yx, params={"keep": keep, "kept_tokens": int(kept.sum()), "keep_source": source},
    )


def local_window(grid: tuple[int, int], window: int) -> AttentionGraph:
    """Plain 2-D ``window`` x ``window`` neighbourhood attention, no special tokens."""
    g = vision_longformer(grid, window=window, n_global=0)
    return make_graph(g.matrix, "LocalWindow", g.grid, g.kind, g.yx, params={"window": window},
                      copy=False)


def dense(n_tokens: int) -> AttentionGraph:
    """Every token attends to every token (one clique: no N^2 CSR is built)."""
    if n_tokens <= 0:
        raise SparseVitError(f"n_tokens must be positive, got {n_tokens}")
    every = np.arange(n_tokens, dtype=np.int64)
    return make_graph(FactoredAdjacency(n_tokens, (Biclique(every, every),),
                                        sp.csr_matrix((n_tokens, n_tokens), dtype=bool)),
                      "Dense")


def from_matrix(matrix, name: str = "UserMask") -> AttentionGraph:
    """Wrap any square matrix (scipy sparse, numpy, torch dense or sparse) as a graph."""
    if sp.issparse(matrix):
        return make_graph(matrix, name)
    if type(matrix).__module__.startswith("torch"):
        return _from_torch(matrix, name)
    return from_dense(matrix, name)


def _from_torch(tensor, name: str) -> AttentionGraph:
    if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]:
        raise SparseVitError(f"adjacency must be square, got shape {tuple(tensor.shape)}")
    import torch

    tensor = tensor.detach()
    if tensor.layout != torch.strided:  # COO, CSR, CSC, BSR...
        coo = tensor.to_sparse_coo().coalesce()
        rows, cols = coo.indices().cpu().numpy()
        vals = (coo.values() != 0).cpu().numpy()
        return make_graph(sp.csr_matrix((vals, (rows, cols)), shape=tuple(tensor.shape)), name)
    return from_dense((tensor != 0).cpu().numpy(), name)


def load(path: str | os.PathLike) -> AttentionGraph:
    """Load a square adjacency from ``.npz`` (scipy sparse, ours, or one dense array),
    ``.npy`` (dense) or ``.pt`` (a torch dense or sparse tensor)."""
    path = Path(path)
    if not path.is_file():
        raise SparseVitError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SparseVitError(f"{path}: unreadable .npy ({e})") from None
        return from_dense(matrix, path.stem)
    if suffix == ".pt":
        import torch  # only this path needs torch

        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt files
            raise SparseVitError(f"{path}: unreadable .pt ({type(e).__name__})") from None
        if not isinstance(tensor, torch.Tensor):
            raise SparseVitError(f"{path}: expected a tensor, got {type(tensor).__name__}")
        return _from_torch(tensor, path.stem)
    raise SparseVitError(f"{path}: unsupported mask format {suffix!r} (.npz, .npy, .pt)")


# The released models' attention graphs, keyed by the model names of the CLI and the
# figures; fixed here so every stage and figure builds the same graph for a model.
MODEL_GRAPHS = {
    "VisionLongformer": partial(vision_longformer, window=15, n_global=1),
    "RegionViT": partial(regionvit, window=7),
    "DynamicViT": partial(dynamicvit, keep=0.343, seed=0),
}
