"""The plan: everything the kernel needs for one graph, built once and reused.

``plan(graph, ...)`` reorders the tokens, pads self-contained groups onto tile
boundaries where that saves work (``layout``), extracts tiles, orders each query
block's tiles (full, then column, then partial), cuts heavy query blocks into work
items, sorts the items longest first and moves the index arrays to the device.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from triton.runtime.errors import OutOfResources

from sparsevit import layout
from sparsevit import reorder as reorder_mod
from sparsevit.blocks import (
    TileSet,
    block_runs,
    dense_spans,
    extract_tiles,
    parse_tile,
    self_only_spans,
)
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph
from sparsevit.kernels.block_sparse_attn import kernel_bitmasks
from sparsevit.kernels.gather_rows import gather_rows

# A partial tile costs its mask expansion on top of a full tile's work, a column tile
# one mask row (measured on H100; only the launch order and the padding choice use it).
PARTIAL_TILE_COST = 1.25
COLUMN_TILE_COST = 1.05
HEAD_DIMS = (16, 32, 64, 128)


@dataclass
class WorkItems:
    """A query block and a range of its tiles per item, in launch order (numpy)."""

    qb: np.ndarray
    t0: np.ndarray
    tmid: np.ndarray  # tiles [t0, tmid) are full, [tmid, tcol) column tiles,
    t1: np.ndarray  # [tcol, t1) partial
    slot: np.ndarray  # workspace slot of a split item, -1 when it writes O itself
    split_qb: np.ndarray  # per split query block: its slots [split_s0, split_s1)
    split_s0: np.ndarray
    split_s1: np.ndarray
    cost: np.ndarray
    tcol: np.ndarray
    # Per item: the position of the single key its block's rows all attend in the lead
    # tile (``lead_tiles``), which the kernel folds into the softmax's start instead of
    # running the tile; -1 when none (and on every piece but the first of a split block).
    lead: np.ndarray
    split: np.ndarray  # per item: its split query block's index in split_qb, -1 if unsplit

    @functools.cached_property
    def n_slots(self) -> int:
        return int((self.slot >= 0).sum())

    @functools.cached_property
    def max_pieces(self) -> int:
        """Pieces of the most split query block (0 when none is split)."""
        return int((self.split_s1 - self.split_s0).max(initial=0))


def single_key_columns(tiles: TileSet) -> tuple[np.ndarray, np.ndarray]:
    """(flag, key offset in the tile) per tile: column tiles whose rows attend exactly one
    key of the tile (a global token's column), offset -1 elsewhere."""
    single = np.zeros(tiles.n_tiles, bool)
    offset = np.full(tiles.n_tiles, -1, np.int64)
    cand = np.flatnonzero(tiles.cols)
    # Row 0's words as bits, column 32*w + b at index 32*w + b (little-endian words).
    bits = np.unpackbits(np.ascontiguousarray(tiles.bitmasks[tiles.mask_id[cand], 0])
                         .astype("<u4").view(np.uint8), axis=1, bitorder="little")
    one = bits.sum(1) == 1
    single[cand[one]] = True
    offset[cand[one]] = np.argmax(bits[one], axis=1)
    return single, offset


def lead_tiles(tiles: TileSet) -> np.ndarray:
    """Per query block: the position of the single key in its first tile when that tile is
    a single-key column tile (``order_tiles`` puts one there), else -1."""
    lead = np.full(tiles.n_query_blocks, -1, np.int64)
    busy = np.flatnonzero(np.diff(tiles.row_ptr) > 0)
    first = tiles.row_ptr[busy]
    single, offset = single_key_columns(tiles)
    hit = single[first]
    lead[busy[hit]] = tiles.col_block[first[hit]] * tiles.bn + offset[first[hit]]
    return lead


def order_tiles(tiles: TileSet) -> TileSet:
    """Within each query block: one single-key column tile (its lead, if any), then full,
    column and partial tiles (each by key block)."""
    qb_of = np.repeat(np.arange(tiles.n_query_blocks), np.diff(tiles.row_ptr))
    single, _ = single_key_columns(tiles)
    lead = np.zeros(tiles.n_tiles, bool)
    lead[np.flatnonzero(single)[np.unique(qb_of[single], return_index=True)[1]]] = True
    kind = np.where(lead, 0, np.where(tiles.full, 1, np.where(tiles.cols, 2, 3)))
    idx = np.lexsort((tiles.col_block, kind, qb_of))
    return TileSet(tiles.bm, tiles.bn, tiles.n_tokens, tiles.row_ptr, tiles.col_block[idx],
                   tiles.nnz[idx], tiles.full[idx], tiles.mask_id[idx], tiles.bitmasks,
                   tiles.cols[idx])


def tile_cost(tiles: TileSet) -> float:
    """Predicted work of a tile set in full-tile units."""
    n_full, n_cols = int(tiles.full.sum()), int(tiles.cols.sum())
    n_partial = tiles.n_tiles - n_full - n_cols
    return n_full + COLUMN_TILE_COST * n_cols + PARTIAL_TILE_COST * n_partial


@dataclass(frozen=True)
class Layout:
    """Ordered tiles of a (reordered) graph over ``n_positions`` padded positions."""

    tiles: TileSet
    positions: np.ndarray  # position of each token of the reordered graph
    n_positions: int
    # Rows [r0, r1) of query blocks that attend only themselves (``self_only_spans``):
    # copied from V, they get no work items.
    self_rows: np.ndarray


def tile_layout(graph: AttentionGraph, tile: tuple[int, int], pad: str | bool = "auto",
                census: bool = False) -> Layout:
    """Tiles of an already reordered graph, with padding (``layout``) when ``pad`` is True,
    or with ``"auto"`` when padding lowers ``tile_cost``. ``census``: the tiles without
    their partial rows (``blocks.extract_tiles``), the same layout otherwise."""
    if pad not in ("auto", True, False):
        raise SparseVitError(f"pad must be 'auto', True or False, got {pad!r}")
    n = graph.n_tokens

    def unpadded() -> Layout:
        return Layout(order_tiles(extract_tiles(graph.matrix, tile, census=census)),
                      np.arange(n), n, self_only_spans(graph.matrix, tile[0]))

    if pad is False:
        return unpadded()
    positions, n_pos = layout.pad_positions(graph, tile)
    if n_pos == n:  # increasing positions with no gap: nothing to pad
        return unpadded()
    valid = np.zeros(n_pos, bool)
    valid[positions] = True
    adj = layout.padded_adjacency(graph.matrix, positions, n_pos)
    padded = Layout(order_tiles(extract_tiles(adj, tile, row_valid=valid, census=census)),
                    positions, n_pos, self_only_spans(adj, tile[0]))
    if pad is True:
        return padded
    plain = unpadded()
    return padded if tile_cost(padded.tiles) < tile_cost(plain.tiles) else plain


MAX_SPLIT = 32  # default cap on the pieces of one heavy query block


def make_work_items(tiles: TileSet, max_tiles: int | None = None,
                    skip: np.ndarray | None = None) -> WorkItems:
    """Cut query blocks longer than ``max_tiles`` into even chunks; order longest first.
    Query blocks marked in ``skip`` (bool per block) get no item: another kernel writes
    them (``dense_spans``). A block's lead tile (``lead_tiles``) is in no item's range:
    its first item starts the softmax from that single key.

    By default ``max_tiles`` is twice the mean tile count of non-empty query blocks
    (at least 8), so a global row's block becomes many items of ordinary length -- but
    never more than MAX_SPLIT of them: the combine pass walks a block's pieces one after
    another (ViL-S at 2048 px, 262k tokens: 205 pieces cost 369 µs of combining).
    """
    counts = np.diff(tiles.row_ptr).astype(np.int64)
    qb_of = np.repeat(np.arange(counts.shape[0]), counts)
    lead_key = lead_tiles(tiles)
    has_lead = (lead_key >= 0).astype(np.int64)
    n_full = np.bincount(qb_of[tiles.full], minlength=counts.shape[0])
    n_cols = np.bincount(qb_of[tiles.cols], minlength=counts.shape[0]) - has_lead
    counts = counts - has_lead
    kept = counts if skip is None else np.where(skip, 0, counts)
    if max_tiles is None:
        busy = kept[kept > 0]
        max_tiles = max(8, 2 * math.ceil(busy.mean())) if busy.size else 8
        max_tiles = max(max_tiles, -(-int(kept.max(initial=0)) // MAX_SPLIT))
    chunks = np.maximum(1, -(-counts // max_tiles))
    if skip is not None:
        chunks[skip] = 0
    qb = np.repeat(np.arange(counts.shape[0]), chunks)
    part = np.arange(qb.shape[0]) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    start = tiles.row_ptr[:-1][qb].astype(np.int64) + has_lead[qb]
    t0 = start + (counts[qb] * part) // chunks[qb]
    t1 = start + (counts[qb] * (part + 1)) // chunks[qb]
    tmid = np.clip(start + n_full[qb], t0, t1)
    tcol = np.clip(start + n_full[qb] + n_cols[qb], t0, t1)
    cost = (tmid - t0) + COLUMN_TILE_COST * (tcol - tmid) + PARTIAL_TILE_COST * (t1 - tcol)
    split = chunks[qb] > 1
    slot = np.full(qb.shape[0], -1, dtype=np.int64)
    slot[split] = np.arange(int(split.sum()))
    split_blocks = np.flatnonzero(chunks > 1)
    s1 = np.cumsum(chunks[split_blocks])
    lead = np.where(part == 0, lead_key[qb], -1)
    block_of = np.where(split, np.searchsorted(split_blocks, qb), -1)
    order = np.argsort(-cost, kind="stable")
    return WorkItems(qb[order], t0[order], tmid[order], t1[order], slot[order], split_blocks,
                     s1 - chunks[split_blocks], s1, cost[order], tcol[order], lead[order],
                     block_of[order])


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
    perm: torch.Tensor  # position -> original token; n_tokens at a padding position
    inv_perm: torch.Tensor  # original token -> position
    arrays: dict[str, torch.Tensor] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)
    # Persistent launch from a schedule: program p runs units [prog_ptr[p], prog_ptr[p+1])
    # of prog_units (unit = item * units_bh + batch*head); None = one program per unit.
    programs: tuple[np.ndarray, np.ndarray] | None = None
    units_bh: int | None = None  # batch * heads the schedule's units were laid out for
    # Dense rectangles run by a dense kernel instead (ours or the vendor's, as
    # config["dense_kernel"] says): rows [r0, r1), keys [c0, c1) in positions, one row
    # each; their query blocks have no work items.
    dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    # Rows [r0, r1) in positions whose only key is themselves (``copied_rows``): their
    # output is a copy of their value rows; their query blocks have no work items.
    self_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    # Per (batch*heads, stream): the split blocks' arrival counters (``ops.attention``).
    tickets: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def n_tokens(self) -> int:
        return self.graph.n_tokens

    @property
    def runs_in_memory(self) -> bool:
        """Whether each block's tokens lie in consecutive rows of the original order
        (``layout.block_memory_rows``): then the kernel moves original-order tiles by bulk
        copies, as it does ordered ones (a model that keeps the unpadded plan order of a
        padded plan calls it so)."""
        return "query_rows" in self.arrays

    @property
    def n_positions(self) -> int:
        """Rows of the ordered form: the tokens plus padding positions."""
        return self.tiles.n_tokens

    @property
    def token_order(self) -> torch.Tensor:
        """Reordered position -> original token, without padding positions (the order of
        ``plan.graph``)."""
        return self.perm[self.perm < self.n_tokens]

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) in original token order -> (..., n_positions, D) in plan order,
        zeros at padding positions."""
        if self.n_positions != self.n_tokens:
            x = torch.cat([x, x.new_zeros(*x.shape[:-2], 1, x.shape[-1])], dim=-2)
        return gather_rows(x, self.perm, -2)

    def unpermute(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n_positions, D) in plan order -> (..., N, D) in original token order."""
        return gather_rows(x, self.inv_perm, -2)

    @functools.cached_property
    def dense_tokens(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(query tokens, key tokens) of each dense rectangle, in original token order
        (padding positions dropped): what the gathered form selects."""
        spans = []
        for r0, r1, c0, c1 in self.dense.tolist():
            rows, keys = self.perm[r0:r1], self.perm[c0:c1]
            spans.append((rows[rows < self.n_tokens], keys[keys < self.n_tokens]))
        return spans

    def describe(self) -> dict[str, Any]:
        return {
            "graph": self.original.name, "tokens": self.n_tokens, "nnz": self.graph.nnz,
            "positions": self.n_positions, "reorder": self.reorder, **self.tiles.stats(),
            "items": int(self.items.qb.shape[0]), "split_blocks": int(self.items.split_qb.shape[0]),
            "self_rows": int(np.diff(self.self_rows, axis=1).sum()),
            **self.config,
        }


TILE_CANDIDATES = ((64, 64), (128, 64), (32, 64), (128, 128), (64, 32))
# With dense="auto", dense rectangles of at least this many rows and keys go to a dense
# kernel (tuning keeps them only where that is faster). DynamicViT at 2048 px: 5,568 x
# 5,621 tokens of its 16,385.
DENSE_MIN_TOKENS = 1024
# The kernel's ONE_LOOP form when at most this fraction of tiles is full. Measured on an
# H200 (bf16, d=64, 16k tokens): one loop is 4-10% faster on Vision Longformer (20% full)
# and RegionViT (0-50% full), 10-12% slower on DynamicViT (96% full).
ONE_LOOP_MAX_FULL = 0.5
LAUNCH_CANDIDATES = ((4, 2), (4, 3), (8, 2), (8, 3))  # (num_warps, num_stages)


def one_loop(tiles: TileSet) -> bool:
    """Whether the kernel should run all tiles in one loop (few full tiles)."""
    return tiles.n_tiles > 0 and float(tiles.full.mean()) <= ONE_LOOP_MAX_FULL


def _device_arrays(tiles: TileSet, items: WorkItems, device: torch.device,
                   programs: tuple[np.ndarray, np.ndarray] | None = None,
                   memory_rows: tuple[np.ndarray, np.ndarray] | None = None,
                   ) -> dict[str, torch.Tensor]:
    """The kernel's int32 inputs, packed row-wise so a launch passes few pointers: items
    (query block, t0, tmid, tcol, t1, slot, lead key, split block), tiles (key tile's
    first position, mask id), splits (s0, s1: a split block's workspace slots), bitmasks
    and the persistent program lists. With ``memory_rows`` (per query block, per key
    block: ``layout.block_memory_rows``), also the query blocks' first memory rows and
    the tiles with their key block's first memory row instead of its first position,
    for bulk copies from the unpadded order."""
    def dev(*columns: np.ndarray) -> torch.Tensor:
        packed = np.stack(columns, axis=1) if len(columns) > 1 else columns[0]
        return torch.as_tensor(np.ascontiguousarray(packed)).to(device=device, dtype=torch.int32)

    bitmasks = kernel_bitmasks(tiles.bitmasks) if tiles.bitmasks.size else np.zeros(1, np.int32)
    prog_ptr, prog_units = programs if programs is not None else (np.zeros(1), np.zeros(1))
    arrays = {
        "items": dev(items.qb, items.t0, items.tmid, items.tcol, items.t1, items.slot,
                     items.lead, items.split),
        "tiles": dev(tiles.col_block * tiles.bn, tiles.mask_id), "bitmasks": dev(bitmasks),
        "splits": dev(items.split_s0, items.split_s1),
        "prog_ptr": dev(prog_ptr), "prog_units": dev(prog_units),
        "no_workspace": torch.empty(1, device=device, dtype=torch.float32),
    }
    if memory_rows is not None:
        query_rows, key_rows = memory_rows
        arrays["query_rows"] = dev(query_rows)
        arrays["tiles_memory"] = dev(key_rows[tiles.col_block], tiles.mask_id)
    return arrays


def find_dense(tiles: TileSet, dense: str | bool) -> np.ndarray:
    """The dense rectangles (``dense_spans``) a plan hands to a dense kernel: none
    (False), all (True) or those of at least DENSE_MIN_TOKENS rows and keys ("auto")."""
    _check_dense(dense)
    if dense is False:
        return np.zeros((0, 4), np.int64)
    least = 1 if dense is True else DENSE_MIN_TOKENS
    return dense_spans(tiles, least, least)


def _check_dense(dense: Any) -> None:
    if dense not in ("auto", True, False):
        raise SparseVitError(f"dense must be 'auto', True or False, got {dense!r}")


def dense_blocks(tiles: TileSet, spans: np.ndarray) -> np.ndarray:
    """Bool per query block: inside the rows [r0, r1) of one of ``spans`` (k, >= 2)."""
    skip = np.zeros(tiles.n_query_blocks, bool)
    for r0, r1 in spans[:, :2].tolist():
        skip[r0 // tiles.bm:-(-r1 // tiles.bm)] = True
    return skip


# Self-only rows are copied from V beside a dense kernel, or where at least this many:
# H200, DynamicViT, 64x64 tiles, µs pre-ordered / gathered. Beside the dense kernel the
# copy won at 1024 px (2,691 rows: 30.1 -> 22.9 / 39.8 -> 34.0) and 2048 px (10,764: 244.1
# -> 223.5 / 270.2 -> 247.4). Without one, its launch lost at 384 px (378 rows: 13.3 ->
# 17.1 / 14.6 -> 17.6) and at 1024 px pre-ordered (37.9 -> 42.9; gathered 50.8 -> 45.6),
# while the diagonal tiles hid in the kernel's tail; at 2048 px it won (286.8 -> 266.2 /
# 420.7 -> 389.8).
COPY_MIN_ROWS = 4096


def copied_rows(lay: Layout, dense: np.ndarray | None = None) -> np.ndarray:
    """The layout's self-only rows (``lay.self_rows``) that a plan with these ``dense``
    rectangles copies from V: those outside the rectangles (a 1 x 1 rectangle can be a
    self-only row too; the dense kernel writes it), all of them beside a dense kernel or
    where they are at least COPY_MIN_ROWS rows, else none (they stay diagonal tiles)."""
    rows = lay.self_rows
    beside = dense is not None and dense.size > 0
    if beside:
        keep = dense_blocks(lay.tiles, rows) & ~dense_blocks(lay.tiles, dense)
        rows = block_runs(keep, lay.tiles.bm, lay.n_positions)
    if beside or int(np.diff(rows, axis=1).sum()) >= COPY_MIN_ROWS:
        return rows
    return rows[:0]


def idle_blocks(lay: Layout, dense: np.ndarray | None = None) -> np.ndarray:
    """Bool per query block that gets no work item (``make_work_items``' skip): inside
    one of the ``dense`` rectangles, or copied (``copied_rows``)."""
    copied = dense_blocks(lay.tiles, copied_rows(lay, dense))
    return copied if dense is None else copied | dense_blocks(lay.tiles, dense)


def choose_reorder(graph: AttentionGraph, tile: tuple[int, int]) -> tuple[str, dict[str, int]]:
    """The reorder method whose order needs the fewest tiles (least computed work)."""
    counts = {}
    for name, method in reorder_mod.METHODS.items():
        try:
            perm = method(graph)
        except SparseVitError:  # geometry orders on a graph without a grid
            continue
        counts[name] = extract_tiles(reorder_mod.apply(graph, perm).matrix, tile).n_tiles
    return min(counts, key=counts.__getitem__), counts


def plan(graph: AttentionGraph, reorder: str = "hilbert", tile: str | tuple[int, int] = (64, 64),
         heads: int = 12, head_dim: int = 64, device: str | torch.device = "cuda",
         max_tiles: int | None = None, num_warps: int | None = None,
         num_stages: int | None = None, batch: int = 1,
         dtype: torch.dtype = torch.bfloat16, schedule: Any = None, profile: Any = None,
         pad: str | bool = "auto", ordered: bool | None = False,
         dense: str | bool = "auto") -> Plan:
    """Build the reusable execution plan of ``graph`` for the block-sparse kernel.

    ``reorder="auto"`` takes the method needing the fewest tiles at the (first) tile shape.
    ``tile="auto"`` (CUDA only) times every shape in TILE_CANDIDATES; on CUDA, warps and
    stages left as None are chosen by timing LAUNCH_CANDIDATES on random (batch, heads,
    N, head_dim) inputs of ``dtype``, in the form the plan will be called with: original
    token order, or plan order with ``ordered=True`` (as ``sv.attention(..., ordered=True)``
    gets them; that form moves tiles by bulk copies, so its best config can differ), or
    with ``ordered=None`` plan order where the layout has no padding and original order
    where it has (a model that keeps the unpadded plan order and gathers padded plans'
    rows calls them so). The timings and the choice land in ``plan.config``.

    ``schedule`` (T4) replaces that choice: one of SCHEDULE_METHODS (solved now by
    ``sparsevit.schedule.solve`` from ``profile``, a T3 profile or a path to one, or the
    cached profile of this GPU when None), a Schedule, or the path of a schedule JSON. Its
    tile shape, launch config, split size, dense rectangles and placement of work units
    are used as given (``dense`` must then stay "auto": the schedule decides).

    ``pad`` (see ``tile_layout``): start self-contained token groups on tile boundaries;
    ``plan.n_positions`` then exceeds the token count by the padding positions.

    ``dense`` (see ``find_dense``): query blocks whose rows attend one contiguous key range
    in full (DynamicViT's kept tokens) run as dense attention instead of tile by tile, in
    our dense kernel or the vendor's, whichever ``ops.choose_dense_kernel`` times faster
    on a GPU. With "auto", tuning times each config with and without them.

    Query blocks whose rows attend only themselves (``self_only_spans``: DynamicViT's
    pruned tokens) are copied from V instead where that measured faster (``copied_rows``:
    beside a dense kernel, or COPY_MIN_ROWS rows and more), with a schedule too.
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
    _check_dense(dense)
    if schedule is not None and dense != "auto":
        raise SparseVitError("with a schedule, its solver chooses the dense rectangles: "
                             f"leave dense='auto' (got {dense!r})")
    perm = reorder_mod.get(reorder)(graph)
    reordered = reorder_mod.apply(graph, perm)
    if schedule is not None:
        chosen = _resolve_schedule(schedule, reordered, profile, batch, heads, head_dim, dtype,
                                   pad)
        return _scheduled_plan(chosen, graph, reordered, perm, reorder, device, heads, head_dim,
                               batch, dtype, pad)
    tune = device.type == "cuda" and (auto_tile or num_warps is None or num_stages is None)
    best: Plan | None = None
    timings: dict[str, float] = {}
    for bm, bn in shapes:
        lay = tile_layout(reordered, (bm, bn), pad)
        spans = find_dense(lay.tiles, dense)
        # Tuning with dense="auto" times both; otherwise the rectangles found are used.
        variants = [spans[:0], spans] if tune and dense == "auto" and spans.size else [spans]
        variants = [(v, make_work_items(lay.tiles, max_tiles, idle_blocks(lay, v)))
                    for v in variants]
        launches = ([(num_warps or w, num_stages or s) for w, s in LAUNCH_CANDIDATES]
                    if tune else [(num_warps or (8 if bm >= 128 else 4), num_stages or 2)])
        launches = list(dict.fromkeys(launches))
        form = lay.n_positions == graph.n_tokens if ordered is None else ordered
        fits = False
        for warps, stages in launches:  # grows by one single-stage try if nothing fits
            for vendor, items in variants:
                key = f"{bm}x{bn}/w{warps}/s{stages}" + ("+dense" if vendor.size else "")
                candidate = _assemble(
                    graph, reordered, perm, reorder, lay, items, device, heads, head_dim,
                    {"tile": f"{bm}x{bn}", "num_warps": warps, "num_stages": stages,
                     "one_loop": one_loop(lay.tiles), "padded": lay.n_positions != graph.n_tokens,
                     "dense": vendor.tolist(),
                     **_dense_kernel(vendor, batch, heads, head_dim, dtype, device),
                     **({"tuned_ordered": form} if tune else {}),
                     **({"reorder_tiles": reorder_tiles} if reorder_tiles else {})},
                    dense=vendor)
                if not tune:
                    return candidate
                try:
                    us = _time_plan(candidate, batch, dtype, form)
                except OutOfResources:  # e.g. fp32 128-wide tiles at head_dim 128: skip it
                    timings[key] = "out of resources"
                    if not fits and (warps, stages) == launches[-1] and stages > 1:
                        launches.append((warps, 1))  # one buffer per operand: the least memory
                    continue
                fits = True
                timings[key] = round(us, 2)
                if best is None or us < best.config["us"]:
                    candidate.config["us"] = us
                    best = candidate
    if best is None:
        tiles = "/".join(f"{m}x{n}" for m, n in shapes)
        raise SparseVitError(f"no launch config of tile {tiles} fits this GPU for head_dim "
                             f"{head_dim} and {dtype}: use a smaller tile")
    best.config["tuned_us"] = timings
    return best


SCHEDULE_METHODS = ("fixed", "greedy", "ilp")


def _resolve_schedule(schedule: Any, ordered: AttentionGraph, profile: Any, batch: int,
                      heads: int, head_dim: int, dtype: torch.dtype, pad: str | bool) -> Any:
    if not isinstance(schedule, (str, os.PathLike)):
        return schedule
    from sparsevit import schedule as schedule_mod  # solver dependencies load on use

    if isinstance(schedule, str) and schedule in SCHEDULE_METHODS:
        return schedule_mod.solve(ordered, profile, schedule, batch=batch, heads=heads,
                                  head_dim=head_dim, dtype=dtype, pad=pad)
    return schedule_mod.Schedule.from_json(schedule)


def _check_programs(ptr: np.ndarray, units: np.ndarray, n_units: int) -> None:
    """Every unit exactly once, ``ptr`` a monotone CSR pointer over ``units``."""
    if (ptr.ndim != 1 or ptr.shape[0] < 2 or ptr[0] != 0 or ptr[-1] != units.shape[0]
            or np.any(np.diff(ptr) < 0)):
        raise SparseVitError("schedule programs: ptr must rise from 0 to len(units)")
    if units.shape[0] != n_units or not np.array_equal(np.sort(units), np.arange(n_units)):
        raise SparseVitError(f"schedule programs must hold each of the {n_units} work units "
                             "exactly once")


def _assemble(graph: AttentionGraph, ordered: AttentionGraph, perm: np.ndarray, reorder: str,
              lay: Layout, items: WorkItems, device: torch.device, heads: int, head_dim: int,
              config: dict[str, Any],
              programs: tuple[np.ndarray, np.ndarray] | None = None,
              units_bh: int | None = None, dense: np.ndarray | None = None) -> Plan:
    """A Plan from its parts: composes the reorder and the padding into one permutation."""
    n = graph.n_tokens
    slot_token = np.full(lay.n_positions, n, np.int64)
    slot_token[lay.positions] = perm
    inv = np.empty(n, np.int64)
    inv[perm] = lay.positions
    bm, bn = lay.tiles.bm, lay.tiles.bn
    rows = {size: layout.block_memory_rows(slot_token, size, n) for size in {bm, bn}}
    memory_rows = (rows[bm], rows[bn])
    arrays = _device_arrays(lay.tiles, items, device, programs,
                            None if any(r is None for r in memory_rows) else memory_rows)
    copies = copied_rows(lay, dense)
    if copies.size:  # the copied rows, as positions (ordered form) and tokens
        at = np.concatenate([np.arange(r0, r1) for r0, r1 in copies.tolist()])
        arrays["self_positions"] = torch.as_tensor(at).to(device)
        arrays["self_tokens"] = torch.as_tensor(slot_token[at]).to(device)
    return Plan(graph, ordered, lay.tiles, items, reorder, device, heads, head_dim,
                torch.as_tensor(slot_token).to(device), torch.as_tensor(inv).to(device),
                arrays, config, programs, units_bh,
                np.zeros((0, 4), np.int64) if dense is None else dense,
                self_rows=copies)


def _scheduled_plan(sched: Any, graph: AttentionGraph, ordered: AttentionGraph,
                    perm: np.ndarray, reorder: str, device: torch.device, heads: int,
                    head_dim: int, batch: int, dtype: torch.dtype, pad: str | bool) -> Plan:
    """The plan a T4 schedule describes, checked against this graph and launch."""
    if (sched.n_tokens, sched.batch, sched.heads, sched.head_dim) != (
            graph.n_tokens, batch, heads, head_dim):
        raise SparseVitError(
            f"schedule is for {sched.n_tokens} tokens, batch {sched.batch}, {sched.heads} heads, "
            f"head_dim {sched.head_dim}; this plan has {graph.n_tokens}, {batch}, {heads}, "
            f"{head_dim}")
    cfg = sched.config
    lay = getattr(sched, "layout", None)  # solved just now: already laid out (same pad)
    if lay is None or (lay.tiles.bm, lay.tiles.bn) != (cfg["bm"], cfg["bn"]):
        lay = tile_layout(ordered, (cfg["bm"], cfg["bn"]), pad)
    vendor = sched.dense_spans()
    found = {tuple(span) for span in dense_spans(lay.tiles).tolist()} if vendor.size else set()
    for span in vendor.tolist():
        if tuple(span) not in found:
            raise SparseVitError(f"schedule's dense rectangle {span} is not one of this "
                                 "graph's: the schedule is for another graph")
    items = make_work_items(lay.tiles, sched.max_tiles, idle_blocks(lay, vendor))
    n_items = int(items.qb.shape[0])
    if n_items != sched.n_items:
        raise SparseVitError(f"schedule expects {sched.n_items} work items, this graph and "
                             f"reorder give {n_items}: the schedule is for another graph")
    programs = None
    if sched.programs is not None:
        ptr = np.asarray(sched.programs["ptr"], dtype=np.int64)
        units = np.asarray(sched.programs["units"], dtype=np.int64)
        _check_programs(ptr, units, n_items * batch * heads)
        programs = (ptr, units)
    config = {"tile": f"{cfg['bm']}x{cfg['bn']}", "num_warps": cfg["num_warps"],
              "num_stages": cfg["num_stages"], "padded": lay.n_positions != graph.n_tokens,
              "schedule": sched.method, "predicted_us": sched.predicted_us,
              "programs_per_sm": cfg.get("programs_per_sm"),
              "programs": None if programs is None else int(programs[0].shape[0] - 1),
              "dense": vendor.tolist(),
              **_dense_kernel(vendor, batch, heads, head_dim, dtype, device)}
    return _assemble(graph, ordered, perm, reorder, lay, items, device, heads, head_dim, config,
                     programs, batch * heads, vendor)


def _dense_kernel(spans: np.ndarray, batch: int, heads: int, head_dim: int,
                  dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Which kernel runs the dense rectangles (``ops.choose_dense_kernel``: timed on a
    GPU); nothing to choose without rectangles or off the GPU."""
    if not spans.size or device.type != "cuda":
        return {}
    from sparsevit.ops import choose_dense_kernel

    return choose_dense_kernel(spans, batch, heads, head_dim, dtype, device)


def _time_plan(candidate: Plan, batch: int, dtype: torch.dtype, ordered: bool) -> float:
    """Median µs of the kernel for random inputs (``timing.bench``: L2 flushed, replayed
    from a CUDA graph)."""
    from sparsevit import timing
    from sparsevit.ops import attention

    n = candidate.n_positions if ordered else candidate.n_tokens
    q, k, v = (torch.randn(batch, candidate.heads, n, candidate.head_dim,
                           device=candidate.device, dtype=dtype) for _ in range(3))
    return timing.bench(lambda: attention(q, k, v, candidate, ordered=ordered), warmup_ms=10,
                        rep_ms=30)["median_us"]
