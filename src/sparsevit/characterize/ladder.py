"""The scalability ladder: one attention layer's time against its token count.

A cell is one (graph, patch, resolution, method). ``ViT`` is a plain ViT's global
attention (every token, the cls token included, attends to every token); the other
graphs are the sparse models' masks of ``sparsevit.masks.MODEL_GRAPHS``. Methods are
``sparsevit.baselines.REGISTRY`` entries, built and timed exactly as ``bench-attn``
does (same q/k/v, same timing, same status rules): no second implementation here.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.sparse as sp

from sparsevit import masks
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph, make_graph

# Short method names of the ladder -> registry entries.
METHODS = {
    "naive": "naive", "sdpa_math": "sdpa_math", "sdpa_flash": "sdpa_flash",
    "sdpa_cudnn": "sdpa_cudnn", "flex": "flex_b128_original", "sparsevit": "sparsevit",
}
# Registry entries that never read the mask (dense kernels): they need no graph object.
MASK_FREE = ("sdpa_flash", "sdpa_cudnn", "flash_attn")
# The all-ones mask of a plain ViT is an N^2-entry CSR on the host and a bool N x N
# tensor on the GPU; beyond this many tokens (N^2 ~ 2.7e8) only mask-free kernels run.
DENSE_MASK_MAX_TOKENS = 16385
# bench-attn's own limit on one backend (build, first call, timing): an in-cell TLE.
# The runner's --time-limit, when shorter, ends the whole cell first.
MEASURE_LIMIT_S = 300.0


def tokens(settings: dict[str, Any]) -> int:
    """Token count of a cell's graph without building it (a plot's x axis; a test checks
    it against the built graphs): the grid plus the special tokens of masks' layout."""
    rows, cols = masks.grid_for(settings["resolution"], settings["patch"])
    graph = settings["graph"]
    if graph == "RegionViT":  # one regional token per window
        window = masks.MODEL_GRAPHS[graph].keywords["window"]
        return rows * cols + -(-rows // window) * -(-cols // window)
    if graph == "VisionLongformer":
        return rows * cols + masks.MODEL_GRAPHS[graph].keywords["n_global"]
    return rows * cols + 1  # ViT and DynamicViT: the cls token


@functools.lru_cache(maxsize=2)
def dense_graph(n: int) -> AttentionGraph:
    """Every token attends to every token, built straight into CSR (no dense N x N)."""
    indptr = np.arange(0, n * n + 1, n, dtype=np.int64)
    indices = np.tile(np.arange(n, dtype=np.int32), n)
    adjacency = sp.csr_matrix((np.ones(n * n, dtype=bool), indices, indptr), shape=(n, n))
    return make_graph(adjacency, "ViT")


def graph_for(settings: dict[str, Any]) -> AttentionGraph:
    grid = masks.grid_for(settings["resolution"], settings["patch"])
    if settings["graph"] == "ViT":
        return dense_graph(grid[0] * grid[1] + 1)
    return masks.MODEL_GRAPHS[settings["graph"]](grid)


def run_ladder_cell(settings: dict[str, Any], device: Any) -> dict[str, Any]:
    """The RESULT row of one ladder cell (never raises for a case a method cannot run)."""
    import torch

    from sparsevit import timing
    from sparsevit.bench_attn import DTYPES, measure_backend

    method = settings["method"]
    if method not in METHODS:
        raise SparseVitError(f"unknown ladder method {method!r}; choose from {', '.join(METHODS)}")
    name = METHODS[method]
    n = tokens(settings)
    b, h, d = settings["batch"], settings["heads"], settings["head_dim"]
    applied = {"graph": settings["graph"], "tokens": n, "patch": settings["patch"],
               "resolution": settings["resolution"], "method": name,
               "qkv_shape": [b, h, n, d], "dtype": settings["dtype"]}
    dense = settings["graph"] == "ViT"
    if dense and name not in MASK_FREE and n > DENSE_MASK_MAX_TOKENS:
        return {"status": "NS", "applied": applied, "reason": (
            f"the all-ones mask of {n} tokens ({n * n:.2g} entries) is not built beyond "
            f"{DENSE_MASK_MAX_TOKENS} tokens; mask-free dense kernels cover this size")}
    graph = None if dense and name in MASK_FREE else graph_for(settings)
    nnz = n * n if graph is None else graph.nnz
    applied["nnz"] = nnz
    dtype = getattr(torch, DTYPES[settings["dtype"]])
    source: Any = graph
    if name == "sparsevit":
        import sparsevit as sv

        tile = settings["tile"]
        source = sv.plan(graph, reorder=settings["reorder"],
                         tile=tile if tile == "auto" else _tile(tile), heads=h, head_dim=d,
                         device=device, batch=b, dtype=dtype)
        applied.update({f"plan_{k}": v for k, v in source.describe().items()
                        if k in ("reorder", "tile", "tiles", "fill", "num_warps", "num_stages")})
    gen = torch.Generator(device=device).manual_seed(settings["seed"])
    q, k, v = (torch.randn((b, h, n, d), device=device, dtype=dtype, generator=gen)
               for _ in range(3))
    flops = timing.attention_flops(nnz, d, h, b)
    n_bytes = timing.attention_bytes(n, d, h, b, q.element_size())
    floor = timing.floor_us(flops, n_bytes, _peaks(str(device)))
    row = measure_backend(name, source, (q, k, v), None, settings["dtype"], flops, floor,
                   limit_s=MEASURE_LIMIT_S)
    return {**row, "applied": applied, "tokens": n, "useful_flops": flops,
            "floor_us": floor}


def _tile(text: str) -> tuple[int, int]:
    from sparsevit.blocks import parse_tile

    return parse_tile(text)


@functools.cache
def _peaks(device: str) -> dict[str, float]:
    from sparsevit import timing

    return timing.measure_peaks(device)
