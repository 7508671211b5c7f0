"""The plan: everything the kernel needs for one graph, built once and reused.

``plan(graph, ...)`` reorders the tokens, extracts tiles, orders each query block's
tiles (full first), cuts heavy query blocks into work items, sorts the items longest
first and moves the index arrays to the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsevit import reorder as reorder_mod
from sparsevit.blocks import TileSet, extract_tiles, parse_tile
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph

# A partial tile costs its mask expansion on top of a full tile's work (measured on
# H100; only the launch order depends on it).
PARTIAL_TILE_COST = 1.25
HEAD_DIMS = (16, 32, 64, 128)


@dataclass
class WorkItems:
    """A query block and a range of its tiles per item, in launch order (numpy)."""

    qb: np.ndarray
    t0: np.ndarray
    tmid: np.ndarray  # tiles [t0, tmid) are full, [tmid, t1) partial
    t1: np.ndarray
    slot: np.ndarray  # workspace slot of a split item, -1 when it writes O itself
    split_qb: np.ndarray  # per split query block: its slots [split_s0, split_s1)
    split_s0: np.ndarray
    split_s1: np.ndarray
    cost: np.ndarray

    @property
    def n_slots(self) -> int:
        return int((self.slot >= 0).sum())


def order_tiles(tiles: TileSet) -> TileSet:
    """Within each query block put full tiles before partial ones (ascending key block)."""
    qb_of = np.repeat(np.arange(tiles.n_query_blocks), np.diff(tiles.row_ptr))
    idx = np.lexsort((tiles.col_block, ~tiles.full, qb_of))
    return TileSet(tiles.bm, tiles.bn, tiles.n_tokens, tiles.row_ptr, tiles.col_block[idx],
                   tiles.nnz[idx], tiles.full[idx], tiles.mask_id[idx], tiles.bitmasks)


def make_work_items(tiles: TileSet, max_tiles: int | None = None) -> WorkItems:
    """Cut query blocks longer than ``max_tiles`` into even chunks; order longest first.

    By default ``max_tiles`` is twice the mean tile count of non-empty query blocks
    (at least 8), so a global row's block becomes many items of ordinary length.
    """
    counts = np.diff(tiles.row_ptr).astype(np.int64)
    if max_tiles is None:
        busy = counts[counts > 0]
        max_tiles = max(8, 2 * math.ceil(busy.mean())) if busy.size else 8
    qb_of = np.repeat(np.arange(counts.shape[0]), counts)
    n_full = np.bincount(qb_of[tiles.full], minlength=counts.shape[0])
    chunks = np.maximum(1, -(-counts // max_tiles))
    qb = np.repeat(np.arange(counts.shape[0]), chunks)
    part = np.arange(qb.shape[0]) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    start = tiles.row_ptr[:-1][qb].astype(np.int64)
    t0 = start + (counts[qb] * part) // chunks[qb]
    t1 = start + (counts[qb] * (part + 1)) // chunks[qb]
    tmid = np.clip(start + n_full[qb], t0, t1)
    cost = (tmid - t0) + PARTIAL_TILE_COST * (t1 - tmid)
    split = chunks[qb] > 1
    slot = np.full(qb.shape[0], -1, dtype=np.int64)
    slot[split] = np.arange(int(split.sum()))
    split_blocks = np.flatnonzero(chunks > 1)
    s1 = np.cumsum(chunks[split_blocks])
    order = np.argsort(-cost, kind="stable")
    return WorkItems(qb[order], t0[order], tmid[order], t1[order], slot[order], split_blocks,
                     s1 - chunks[split_blocks], s1, cost[order])


@dataclass
class Plan:
    """Reordered graph, tiles and work items for one graph, ready on ``device``."""

    original: AttentionGraph
    graph: AttentionGraph
    tiles: TileSet
    items: WorkItems
    reorder: str
    device: torch.device
    heads: int
    head_dim: int
    perm: torch.Tensor  # new position -> original token
    inv_perm: torch.Tensor
    arrays: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return self.graph.n_tokens

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) in original token order -> plan order."""
        return x.index_select(-2, self.perm)

    def unpermute(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) in plan order -> original token order."""
        return x.index_select(-2, self.inv_perm)

    def describe(self) -> dict[str, Any]:
        return {
            "graph": self.original.name, "tokens": self.n_tokens, "nnz": self.graph.nnz,
            "reorder": self.reorder, **self.tiles.stats(),
            "items": int(self.items.qb.shape[0]), "split_blocks": int(self.items.split_qb.shape[0]),
            **self.config,
        }


TILE_CANDIDATES = ((64, 64), (128, 64), (32, 64), (128, 128), (64, 32))
LAUNCH_CANDIDATES = ((4, 2), (4, 3), (8, 2), (8, 3))  # (num_warps, num_stages)


def _device_arrays(tiles: TileSet, items: WorkItems,
                   device: torch.device) -> dict[str, torch.Tensor]:
    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=torch.int32)

    bitmasks = tiles.bitmasks.reshape(-1) if tiles.bitmasks.size else np.zeros(1, np.int32)
    return {
        "item_qb": dev(items.qb), "item_t0": dev(items.t0), "item_tmid": dev(items.tmid),
        "item_t1": dev(items.t1), "item_slot": dev(items.slot),
        "col_block": dev(tiles.col_block), "mask_id": dev(tiles.mask_id), "bitmasks": dev(bitmasks),
        "split_qb": dev(items.split_qb), "split_s0": dev(items.split_s0),
        "split_s1": dev(items.split_s1),
    }


def choose_reorder(graph: AttentionGraph, tile: tuple[int, int]) -> tuple[str, dict[str, int]]:
    """The reorder method whose order needs the fewest tiles (least computed work)."""
    counts = {}
    for name, method in reorder_mod.METHODS.items():
        try:
            perm = method(graph)
        except SparseVitError:  # geometry orders on a graph without a grid
            continue
        counts[name] = extract_tiles(reorder_mod.apply(graph, perm).adjacency, tile).n_tiles
    return min(counts, key=counts.__getitem__), counts


def plan(graph: AttentionGraph, reorder: str = "hilbert", tile: str | tuple[int, int] = (64, 64),
         heads: int = 12, head_dim: int = 64, device: str | torch.device = "cuda",
         max_tiles: int | None = None, num_warps: int | None = None,
         num_stages: int | None = None, batch: int = 1,
         dtype: torch.dtype = torch.bfloat16) -> Plan:
    """Build the reusable execution plan of ``graph`` for the block-sparse kernel.

    ``reorder="auto"`` takes the method needing the fewest tiles at the (first) tile shape.
    ``tile="auto"`` (CUDA only) times every shape in TILE_CANDIDATES; on CUDA, warps and
    stages left as None are chosen by timing LAUNCH_CANDIDATES on random (batch, heads,
    N, head_dim) inputs of ``dtype``. The timings and the choice land in ``plan.config``.
    """
    if head_dim not in HEAD_DIMS:
        raise SparseVitError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparseVitError("device='cuda' but no CUDA GPU is visible (use device='cpu' "
                             "with TRITON_INTERPRET=1 to run the kernel on the CPU)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    auto_tile = isinstance(tile, str) and tile == "auto"
    if auto_tile and device.type != "cuda":
        raise SparseVitError("tile='auto' times the kernel and needs device='cuda'")
    shapes = TILE_CANDIDATES if auto_tile else (parse_tile(tile),)
    reorder_tiles: dict[str, int] = {}
    if reorder == "auto":
        reorder, reorder_tiles = choose_reorder(graph, shapes[0])
    perm = reorder_mod.get(reorder)(graph)
    ordered = reorder_mod.apply(graph, perm)
    perm_t = torch.as_tensor(perm).to(device)
    tune = device.type == "cuda" and (auto_tile or num_warps is None or num_stages is None)
    best: Plan | None = None
    timings: dict[str, float] = {}
    for bm, bn in shapes:
        tiles = order_tiles(extract_tiles(ordered.adjacency, (bm, bn)))
        items = make_work_items(tiles, max_tiles)
        launches = ([(num_warps or w, num_stages or s) for w, s in LAUNCH_CANDIDATES]
                    if tune else [(num_warps or (8 if bm >= 128 else 4), num_stages or 2)])
        for warps, stages in dict.fromkeys(launches):
            candidate = Plan(graph, ordered, tiles, items, reorder, device, heads, head_dim,
                             perm_t, torch.argsort(perm_t),
                             _device_arrays(tiles, items, device),
                             {"tile": f"{bm}x{bn}", "num_warps": warps, "num_stages": stages,
                              **({"reorder_tiles": reorder_tiles} if reorder_tiles else {})})
            if not tune:
                return candidate
            us = _time_plan(candidate, batch, dtype)
            timings[f"{bm}x{bn}/w{warps}/s{stages}"] = round(us, 2)
            if best is None or us < best.config["us"]:
                candidate.config["us"] = us
                best = candidate
    assert best is not None
    best.config["tuned_us"] = timings
    return best


def _time_plan(candidate: Plan, batch: int, dtype: torch.dtype) -> float:
    """Median µs of the kernel for random inputs (triton.testing.do_bench flushes L2)."""
    import triton.testing

    from sparsevit.ops import attention

    q, k, v = (torch.randn(batch, candidate.heads, candidate.n_tokens, candidate.head_dim,
                           device=candidate.device, dtype=dtype) for _ in range(3))
    return 1e3 * triton.testing.do_bench(lambda: attention(q, k, v, candidate),
                                         warmup=10, rep=30, return_mode="median")
