"""Exact structure of every mask pattern, and loading masks from files.

Each pattern is checked against a brute-force dense construction written independently
of masks.py, plus closed-form per-row and total nnz counts.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sparsevit import graph, masks
from sparsevit.errors import SparseVitError
from sparsevit.graph import CLS, GLOBAL, LOCAL, REGIONAL


def raster(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.divmod(np.arange(h * w), w)


def span(c: np.ndarray, r: int, size: int) -> np.ndarray:
    """Length of [c - r, c + r] clipped to [0, size)."""
    return np.minimum(c + r, size - 1) - np.maximum(c - r, 0) + 1


def row_counts(g: graph.AttentionGraph) -> np.ndarray:
    return np.diff(g.adjacency.indptr)


# ------------------------------------------------------------------ Vision Longformer

VL_GRIDS = [(1, 1), (3, 3), (9, 5), (5, 9), (16, 16), (80, 45)]


@pytest.mark.parametrize("grid", VL_GRIDS)
@pytest.mark.parametrize("window", [1, 3, 15])
@pytest.mark.parametrize("n_global", [0, 1, 2])
def test_vision_longformer_exact(grid, window, n_global):
    h, w = grid
    r = window // 2
    g = masks.vision_longformer(grid, window=window, n_global=n_global)
    n = n_global + h * w
    assert g.n_tokens == n and g.grid == grid
    y, x = raster(h, w)
    counts = row_counts(g)
    assert (counts[:n_global] == n).all()  # global rows attend to all
    assert (counts[n_global:] == n_global + span(y, r, h) * span(x, r, w)).all()
    # Closed form: separable window sizes, plus each global row and column.
    sy, sx = span(np.arange(h), r, h).sum(), span(np.arange(w), r, w).sum()
    assert g.nnz == n_global * n + h * w * n_global + sy * sx
    expect = np.ones((n, n), dtype=bool)
    expect[n_global:, n_global:] = ((abs(y[:, None] - y[None, :]) <= r)
                                    & (abs(x[:, None] - x[None, :]) <= r))
    assert (g.adjacency.toarray() == expect).all()  # global columns are full too
    assert (g.kind[:n_global] == GLOBAL).all() and (g.kind[n_global:] == LOCAL).all()
    assert (g.yx[n_global:] == np.stack([y, x], 1)).all() and (g.yx[:n_global] == -1).all()


@pytest.mark.parametrize("grid", [(1, 1), (7, 7), (9, 5), (20, 15), (80, 45)])
@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("n_global", [0, 1, 2])
def test_vision_longformer_sliding_chunk(grid, chunk, n_global):
    h, w = grid
    g = masks.vision_longformer(grid, n_global=n_global, mode="sliding_chunk", chunk=chunk)
    n = n_global + h * w
    y, x = raster(h, w)
    cy, cx = y // chunk, x // chunk

    def chunk_span(c, size):  # own chunk and one either side, clipped
        return np.minimum((c + 2) * chunk, size) - np.maximum(c - 1, 0) * chunk

    counts = row_counts(g)
    assert (counts[:n_global] == n).all()
    assert (counts[n_global:] == n_global + chunk_span(cy, h) * chunk_span(cx, w)).all()
    expect = np.ones((n, n), dtype=bool)
    expect[n_global:, n_global:] = ((abs(cy[:, None] - cy[None, :]) <= 1)
                                    & (abs(cx[:, None] - cx[None, :]) <= 1))
    assert (g.adjacency.toarray() == expect).all()


@pytest.mark.parametrize("kwargs", [
    {"window": 0}, {"window": -3}, {"window": 2}, {"window": 14}, {"mode": "chunked"},
    {"mode": "sliding_chunk", "chunk": 0}, {"n_global": -1},
])
def test_vision_longformer_bad_arguments(kwargs):
    with pytest.raises(SparseVitError):
        masks.vision_longformer((8, 8), **kwargs)


@pytest.mark.parametrize("grid", [(0, 4), (4, -1), (4,)])
def test_bad_grid(grid):
    with pytest.raises(SparseVitError):
        masks.vision_longformer(grid)


def test_local_window_is_longformer_without_globals():
    g = masks.local_window((9, 5), window=3)
    ref = masks.vision_longformer((9, 5), window=3, n_global=0)
    assert (g.adjacency != ref.adjacency).nnz == 0 and (g.kind == LOCAL).all()


# --------------------------------------------------------------------------- RegionViT


@pytest.mark.parametrize("grid", [(1, 1), (7, 7), (9, 5), (14, 14), (15, 22), (56, 56)])
@pytest.mark.parametrize("window", [1, 3, 7])
def test_regionvit_local(grid, window):
    h, w = grid
    rh, rw = -(-h // window), -(-w // window)
    n_reg = rh * rw
    g = masks.regionvit(grid, window=window, step="local")
    n = n_reg + h * w
    assert g.n_tokens == n and g.params["regional_grid"] == [rh, rw]
    assert (g.kind[:n_reg] == REGIONAL).all() and (g.kind[n_reg:] == LOCAL).all()
    y, x = raster(h, w)
    assert (g.yx[n_reg:] == np.stack([y, x], 1)).all()
    region = np.concatenate([np.arange(n_reg), (y // window) * rw + x // window])
    assert (g.region == region).all()
    # Each window plus its regional token is a clique, and there is nothing else.
    assert (g.adjacency.toarray() == (region[:, None] == region[None, :])).all()
    ry, rx = np.divmod(np.arange(n_reg), rw)  # ragged windows at the border
    size = 1 + (np.minimum((ry + 1) * window, h) - ry * window) * (
        np.minimum((rx + 1) * window, w) - rx * window)
    assert (row_counts(g) == size[region]).all()
    assert g.nnz == (size**2).sum()


@pytest.mark.parametrize("grid, window", [((9, 5), 7), ((56, 56), 7), ((1, 1), 3)])
def test_regionvit_regional(grid, window):
    rh, rw = -(-grid[0] // window), -(-grid[1] // window)
    g = masks.regionvit(grid, window=window, step="regional")
    r = rh * rw
    assert g.n_tokens == r and g.grid == (rh, rw) and g.nnz == r * r
    assert (g.region == np.arange(r)).all()
    y, x = raster(rh, rw)
    assert (g.yx == np.stack([y, x], 1)).all()


def test_regionvit_regional_kind():
    assert (masks.regionvit((14, 14), window=7, step="regional").kind == REGIONAL).all()


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": -7}, {"step": "global"}])
def test_regionvit_bad_arguments(kwargs):
    with pytest.raises(SparseVitError):
        masks.regionvit((14, 14), **kwargs)


# -------------------------------------------------------------------------- DynamicViT


def kept_of(g: graph.AttentionGraph) -> np.ndarray:
    """Kept local tokens (grid order) read off the cls row, checking every row's shape."""
    adj = g.adjacency.tocsr()
    kept_all = np.zeros(g.n_tokens, dtype=bool)
    kept_all[adj.indices[adj.indptr[0]:adj.indptr[1]]] = True
    assert kept_all[0] and g.kind[0] == CLS
    kept_idx = np.flatnonzero(kept_all)
    for i in range(g.n_tokens):
        row = adj.indices[adj.indptr[i]:adj.indptr[i + 1]]
        if kept_all[i]:
            assert (row == kept_idx).all()  # kept (and cls) attend to every kept token
        else:
            assert (row == [i]).all()  # a dropped token keeps only its self loop
    return kept_all[1:]


@pytest.mark.parametrize("grid", [(1, 1), (3, 4), (14, 14), (24, 24)])
@pytest.mark.parametrize("keep", [1.0, 0.7, 0.49, 0.343, 0.05])
def test_dynamicvit_counts(grid, keep):
    hw = grid[0] * grid[1]
    g = masks.dynamicvit(grid, keep=keep, seed=3)
    kept = kept_of(g)
    # round(keep * HW), but never zero tokens: a stage always keeps one.
    assert kept.sum() == max(1, round(keep * hw)) == g.params["kept_tokens"]
    assert g.n_tokens == 1 + hw and (g.kind[1:] == LOCAL).all()
    assert g.nnz == (kept.sum() + 1) ** 2 + (hw - kept.sum())


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_dynamicvit_stages_nested(seed):
    keeps = sorted(masks.DYNAMICVIT_KEEP.values(), reverse=True)
    kept = [kept_of(masks.dynamicvit((24, 24), keep=k, seed=seed)) for k in [1.0, *keeps]]
    for bigger, smaller in itertools.pairwise(kept):
        assert (smaller <= bigger).all() and smaller.sum() < bigger.sum()
    other = kept_of(masks.dynamicvit((24, 24), keep=keeps[-1], seed=seed + 100))
    assert (other != kept[-1]).any()  # the seed matters


def test_dynamicvit_keep_mask():
    mask = np.random.default_rng(5).random((6, 7)) < 0.4
    for given in (mask, mask.ravel(), mask.astype(int)):
        g = masks.dynamicvit((6, 7), keep_mask=given)
        assert (kept_of(g) == mask.ravel()).all()
        assert g.params["keep"] == pytest.approx(mask.mean())
        assert g.params["kept_tokens"] == mask.sum()
    with pytest.raises(SparseVitError):
        masks.dynamicvit((6, 7), keep_mask=np.ones(41, dtype=bool))


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.01, float("nan")])
def test_dynamicvit_bad_keep(keep):
    with pytest.raises(SparseVitError):
        masks.dynamicvit((8, 8), keep=keep)


def test_dense():
    g = masks.dense(5)
    assert g.nnz == 25 and g.density == 1.0
    with pytest.raises(SparseVitError):
        masks.dense(0)


# ---------------------------------------------------------------------------- grid_for


@pytest.mark.parametrize("resolution, patch, grid", [
    (224, 16, (14, 14)), (384, 16, (24, 24)), ((384, 224), 16, (24, 14)), (1024, 4, (256, 256)),
])
def test_grid_for(resolution, patch, grid):
    assert masks.grid_for(resolution, patch) == grid


@pytest.mark.parametrize("resolution, patch", [
    (225, 16), ((224, 230), 16), (224, 0), (224, -16), (0, 16), ((224, -224), 16),
])
def test_grid_for_errors(resolution, patch):
    with pytest.raises(SparseVitError):
        masks.grid_for(resolution, patch)


# ----------------------------------------------------------------- from_matrix and load


@pytest.fixture
def matrix() -> np.ndarray:
    m = np.random.default_rng(0).random((23, 23)) < 0.2
    m[3, 4] = True
    return m


def same(g: graph.AttentionGraph, m: np.ndarray) -> bool:
    return g.adjacency.shape == m.shape and (g.adjacency.toarray() == (m != 0)).all()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_from_matrix_kinds(matrix):
    weights = np.where(matrix, 2.5, 0.0)
    for given in (matrix, weights, sp.csr_matrix(weights), sp.coo_array(matrix),
                  torch.from_numpy(matrix), torch.from_numpy(weights).to_sparse(),
                  torch.from_numpy(weights).to_sparse_csr()):
        g = masks.from_matrix(given, name="m")
        assert same(g, matrix) and g.name == "m"


@pytest.mark.parametrize("given", [
    np.ones((3, 4)), sp.csr_matrix(np.ones((4, 3))), torch.ones(3, 4),
    torch.ones(3, 4).to_sparse(), np.ones((2, 2, 2)), np.ones(4), np.ones((0, 0)),
])
def test_from_matrix_rejects(given):
    with pytest.raises(SparseVitError):
        masks.from_matrix(given)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_load_formats(tmp_path, matrix):
    t = torch.from_numpy(matrix)
    sp.save_npz(tmp_path / "csr.npz", sp.csr_matrix(matrix))
    sp.save_npz(tmp_path / "coo.npz", sp.coo_matrix(matrix.astype(np.float32)))
    np.savez(tmp_path / "dense.npz", matrix)
    np.save(tmp_path / "dense.npy", matrix.astype(np.float64))
    torch.save(t, tmp_path / "dense.pt")
    torch.save(t.float().to_sparse(), tmp_path / "coo.pt")
    torch.save(t.float().to_sparse_csr(), tmp_path / "csr.pt")
    for f in sorted(tmp_path.iterdir()):
        g = masks.load(f)
        assert same(g, matrix), f.name
        assert g.name == f.stem
    assert masks.load(str(tmp_path / "dense.npy")).nnz == matrix.sum()  # str paths too


def test_save_load_round_trip(tmp_path):
    g = graph.permute(masks.regionvit((9, 5), window=3),
                      np.random.default_rng(1).permutation(2 * 3 + 45))
    path = graph.save(g, tmp_path / "g.npz")
    h = masks.load(path)
    assert (h.adjacency != g.adjacency).nnz == 0
    assert (h.name, h.grid, h.params) == (g.name, g.grid, g.params)
    for key in ("kind", "yx", "region", "order"):
        got, want = getattr(h, key), getattr(g, key)
        assert got.dtype == want.dtype and (got == want).all(), key


def test_save_is_atomic_and_scipy_readable(tmp_path, monkeypatch):
    g = masks.vision_longformer((6, 6), window=3)
    target = tmp_path / "sub" / "g.npz"
    graph.save(g, target)
    graph.save(g, target)  # overwrite in place
    assert [p.name for p in target.parent.iterdir()] == ["g.npz"]
    assert (sp.load_npz(target) != g.adjacency).nnz == 0
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError):
        graph.save(masks.dense(3), target)
    assert [p.name for p in target.parent.iterdir()] == ["g.npz"]  # no temp file left
    assert target.read_bytes() == before  # old file intact
    with pytest.raises(SparseVitError):
        graph.save(g, tmp_path / "g.npy")


@pytest.mark.parametrize("name, content", [
    ("garbage.npz", b"not a zip file at all"), ("empty.npz", b""),
    ("garbage.npy", b"\x93NUMPY garbage"), ("garbage.pt", b"not a pickle"),
])
def test_load_corrupt(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SparseVitError):
        masks.load(path)


def test_load_truncated_npz(tmp_path):
    path = graph.save(masks.vision_longformer((6, 6), window=3), tmp_path / "g.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SparseVitError):
        masks.load(path)


def test_load_bad_contents(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.eye(3), b=np.eye(3))
    np.savez(tmp_path / "rect.npz", np.ones((3, 4)))
    sp.save_npz(tmp_path / "rect_sparse.npz", sp.csr_matrix(np.ones((3, 4))))
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    np.save(tmp_path / "vector.npy", np.ones(3))
    np.save(tmp_path / "object.npy", np.array([{}], dtype=object))
    torch.save(torch.ones(3, 4), tmp_path / "rect.pt")
    torch.save({"mask": torch.eye(3)}, tmp_path / "dict.pt")
    for f in sorted(tmp_path.iterdir()):
        with pytest.raises(SparseVitError):
            masks.load(f)


def test_load_missing_and_unsupported(tmp_path):
    with pytest.raises(SparseVitError, match="no such file"):
        masks.load(tmp_path / "missing.npz")
    with pytest.raises(SparseVitError, match="no such file"):
        masks.load(tmp_path)  # a directory
    (tmp_path / "mask.txt").write_text("1 0\n0 1\n")
    with pytest.raises(SparseVitError, match="unsupported"):
        masks.load(tmp_path / "mask.txt")


def test_from_matrix_bfloat16():
    assert masks.from_matrix(torch.eye(4, dtype=torch.bfloat16)).nnz == 4


def test_from_matrix_leaves_input_untouched():
    m = sp.csr_matrix((np.ones(2, bool), np.array([1, 0]), np.array([0, 2, 2])), shape=(2, 2))
    masks.from_matrix(m)
    assert m.indices.tolist() == [1, 0]
