"""Attention backends shared by every model: one T1 graph per attention layer, run
by whichever backend the model is switched to.

A model asks its :class:`AttentionContext` for a :class:`StageAttention` per (graph,
batch, heads, head_dim, device, dtype); it is built on first use and cached, so plans,
masks and BlockMasks are made once per (model, resolution, batch). A StageAttention
holds the token *layout* its backend wants (``to_layout`` once when the stage starts,
``from_layout`` once when it ends; every block in between keeps that order) and
``attend(q, k, v)`` on (B, H, N, D) tensors in that layout.

Backends:
- ``dense``: SDPA with the graph's boolean mask (plain SDPA when the graph is dense);
- ``full``: plain SDPA ignoring the mask (the cost of the same model with full
  attention; a timing reference, its logits differ);
- ``flex``: compiled FlexAttention with a BlockMask built from the graph's 128x128
  tiles, in the reordered token order (its best setting);
- ``native``: the model's own structured path (see the model modules);
- ``sparsevit``: ``sv.attention(..., ordered=True)`` on a plan of the graph, tokens
  reordered once per stage;
- ``floor``: attention replaced by ``out = v`` (no attention cost at all).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from sparsevit import masks
from sparsevit import reorder as reorder_mod
from sparsevit.baselines import NotSupportedError, compiled_flex, fastest_flex
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph
from sparsevit.kernels.gather_rows import gather_rows

BACKENDS = ("dense", "full", "flex", "native", "sparsevit", "floor")
# Backends whose logits must equal the masked model's (``full`` drops the mask, ``floor``
# drops attention).
EXACT_BACKENDS = ("dense", "flex", "native", "sparsevit")
# SDPA's mem-efficient kernel reads wrong mask rows beyond 2^16 tokens (torch 2.11,
# pytorch/pytorch#187227, see sparsevit.baselines): the masked dense path refuses there.
DENSE_MASK_MAX_TOKENS = 1 << 16
FLEX_BLOCK = 128

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class GraphSpec:
    """Which T1 graph an attention layer uses; hashable, so it keys the caches."""

    kind: str  # "dense", "vil" or "regionvit"
    grid: tuple[int, int]  # token grid; for "dense": (1, n_tokens)
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def dense(n_tokens: int) -> GraphSpec:
        return GraphSpec("dense", (1, int(n_tokens)))

    def param(self, name: str) -> Any:
        return dict(self.params)[name]

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"


@functools.lru_cache(maxsize=32)
def build_graph(spec: GraphSpec) -> AttentionGraph:
    """The spec's graph from sparsevit.masks (cached: a stage's layers share it)."""
    p = dict(spec.params)
    if spec.kind == "dense":
        return masks.dense(spec.grid[1])
    if spec.kind == "vil":
        return masks.vision_longformer(spec.grid, window=p["window"], n_global=p["n_global"],
                                       mode=p["mode"], chunk=p["chunk"])
    if spec.kind == "regionvit":
        return masks.regionvit(spec.grid, window=p["window"], step="local")
    raise SparseVitError(f"unknown graph kind {spec.kind!r}")


def reorder_for(spec: GraphSpec) -> str:
    """Token order of the reordered backends. ViL: Hilbert (fewest 64x64 tiles of the
    curves) with tokens of identical rows together ("grouped": the sliding-chunk variant's
    chunks, which the planner then pads to tile boundaries; the exact window has no two
    identical rows, so there it is Hilbert). RegionViT: window after window ("tiled" with
    the window as tile: 2.7x fewer 64x64 tiles than Hilbert at 128x128 tokens, 7x7
    windows)."""
    return {"dense": "none", "vil": "grouped", "regionvit": "windows"}[spec.kind]


@functools.lru_cache(maxsize=32)
def ordered_graph(spec: GraphSpec, method: str) -> tuple[np.ndarray, AttentionGraph]:
    """(perm, reordered graph) of ``spec``; shared by the flex and sparsevit backends."""
    graph = build_graph(spec)
    if method == "windows":
        window = spec.param("window")
        perm = reorder_mod.tiled(graph, tile=(window, window))
    else:
        perm = reorder_mod.get(method)(graph)
    return perm, reorder_mod.apply(graph, perm)


@dataclass
class StageAttention:
    """One graph under one backend: its token layout and its attention function.

    ``gather`` lists, per layout slot, the original token (``n_tokens`` = a zero padding
    slot); ``scatter`` gives each original token's slot. None means the identity.
    """

    spec: GraphSpec
    backend: str
    n_tokens: int
    attend: Attend
    gather: Tensor | None = None
    scatter: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_layout(self, x: Tensor) -> Tensor:
        """(B, N, C) in graph order -> (B, M, C) in this backend's layout."""
        if self.gather is None:
            return x
        if int(self.gather.shape[0]) != self.n_tokens:  # padding slots read a zero row
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
        return gather_rows(x, self.gather, 1)

    def from_layout(self, x: Tensor) -> Tensor:
        return x if self.scatter is None else gather_rows(x, self.scatter, 1)

    def positions(self, tokens: Tensor) -> Tensor:
        """Layout slots of the given original tokens."""
        return tokens if self.scatter is None else self.scatter.index_select(0, tokens)


# ------------------------------------------------------------------------- backends


def _sdpa_masked(spec: GraphSpec, device: torch.device) -> Attend:
    if spec.is_dense:
        return functional.scaled_dot_product_attention
    graph = build_graph(spec)
    if graph.n_tokens > DENSE_MASK_MAX_TOKENS:
        raise NotSupportedError(
            f"SDPA with a {graph.n_tokens}-token boolean mask: its mem-efficient kernel "
            f"reads wrong mask rows beyond {DENSE_MASK_MAX_TOKENS} tokens (pytorch#187227)")
    from sparsevit.baselines import dense_mask

    mask = dense_mask(graph, device)
    return functools.partial(functional.scaled_dot_product_attention, attn_mask=mask)


def _floor(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return v


def flex_for(device: torch.device) -> Callable[..., Tensor]:
    """Compiled FlexAttention on CUDA; on the CPU (tests) Flex's eager reference path."""
    from torch.nn.attention.flex_attention import flex_attention

    return compiled_flex() if device.type == "cuda" else flex_attention


def tile_block_mask(graph: AttentionGraph, device: torch.device, block: int = FLEX_BLOCK):
    """A FlexAttention BlockMask of ``graph`` built from its ``block``-square tiles.

    Full tiles are Flex's full blocks (no mask_mod); partial tiles evaluate a mask_mod
    that reads the tile's packed bitmask, so the BlockMask is exact for any graph and
    never needs an N x N matrix. The mask_mod is also true on full tiles: Flex's CPU path
    evaluates it there too (false there gave wrong rows once a graph had a full tile).
    """
    from torch.nn.attention.flex_attention import BlockMask

    from sparsevit.blocks import extract_tiles

    tiles = extract_tiles(graph.adjacency, (block, block))
    n_qb, n_kb = tiles.n_query_blocks, tiles.n_key_blocks
    qb_of = np.repeat(np.arange(n_qb), np.diff(tiles.row_ptr))

    def blocks(select: np.ndarray) -> tuple[Tensor, Tensor]:
        counts = np.bincount(qb_of[select], minlength=n_qb)
        idx = np.zeros((n_qb, max(n_kb, 1)), dtype=np.int32)
        rank = np.arange(select.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        idx[qb_of[select], rank] = tiles.col_block[select]
        as_dev = functools.partial(torch.as_tensor, device=device, dtype=torch.int32)
        return as_dev(counts)[None, None], as_dev(idx)[None, None]

    partial_num, partial_idx = blocks(~tiles.full)
    full_num, full_idx = blocks(tiles.full)
    tile_mask = np.full((n_qb, n_kb), -1, dtype=np.int32)  # -1: no tile, -2: full tile
    tile_mask[qb_of, tiles.col_block] = np.where(tiles.full, -2, tiles.mask_id)
    tile_of = torch.as_tensor(tile_mask, device=device)
    bits = torch.as_tensor(tiles.bitmasks.reshape(-1) if tiles.bitmasks.size else
                           np.zeros(1, np.int32), device=device, dtype=torch.int32)
    words = tiles.words_per_row

    def mask_mod(b, h, q_idx, kv_idx):
        mid = tile_of[q_idx // block, kv_idx // block]
        row = mid.clamp(min=0).to(torch.int64) * block + q_idx % block
        word = bits[row * words + (kv_idx % block) // 32]
        return (mid == -2) | ((mid >= 0) & (((word >> (kv_idx % 32)) & 1) != 0))

    return BlockMask.from_kv_blocks(partial_num, partial_idx, full_num, full_idx,
                                    BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(graph.n_tokens, graph.n_tokens))


def flex_attend(block_mask: Any, device: torch.device, info: dict[str, Any]) -> Attend:
    """Flex with ``block_mask``; on CUDA its kernel options are the fastest of
    ``baselines.flex_options`` for the first call's shapes (recorded in ``info``)."""
    flex = flex_for(device)
    chosen: dict[str, Any] = {}

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if "options" not in chosen:
            chosen["options"] = None
            if q.is_cuda and block_mask is not None:
                chosen["options"], info["flex_option_us"] = fastest_flex(
                    lambda o: flex(q, k, v, block_mask=block_mask, kernel_options=o),
                    block_mask.BLOCK_SIZE[0])
                info["flex_kernel_options"] = chosen["options"]
        return flex(q, k, v, block_mask=block_mask, kernel_options=chosen["options"])

    return attend


# sv.attention as a custom op, so torch.compile keeps the model in one graph around it.
# The plan travels as an integer key into _PLANS (plans are not tensors).
_PLANS: dict[int, tuple[Any, bool]] = {}
_plan_ids = itertools.count()


@torch.library.custom_op("sparsevit::planned_attention", mutates_args=())
def planned_attention(q: Tensor, k: Tensor, v: Tensor, plan_id: int) -> Tensor:
    from sparsevit.ops import attention

    plan, ordered = _PLANS[plan_id]
    # The kernel reads strided q, k, v views (any row stride) directly: copying them cost
    # ~1.1 ms per ViL-S 2048 px forward (profile in ae/e2e/README.md). Its output is the
    # (B, H, N, D) view of (B, N, H, D) memory, which the fake output below matches.
    return attention(q, k, v, plan, ordered=ordered)


@planned_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, plan_id: int) -> Tensor:
    b, h, n, d = q.shape
    return q.new_empty(b, n, h, d).transpose(1, 2)


def register_plan(plan: Any, ordered: bool) -> int:
    key = next(_plan_ids)
    _PLANS[key] = (plan, ordered)
    return key


# ------------------------------------------------------------------------- context


@dataclass
class PlanOptions:
    """How sparsevit plans are built: ``tile`` (BM, BN) or "auto" (timed on CUDA, like
    the warps/stages, by sv.plan)."""

    tile: Any = (64, 64)
    reorder: str | None = None  # None: reorder_for(spec)
    # Dense layers (ViT-B, DynamicViT after its gather, RegionViT's regional step) under
    # the sparsevit backend: "sdpa" runs SDPA (cuDNN/flash) on them, "kernel" plans the
    # dense graph for sparsevit's kernel (T2 then builds an N^2-entry CSR: 10 s at 8k
    # tokens on one CPU core, measured).
    dense_layers: str = "sdpa"
    # The planner may pad token groups to tile boundaries (sv.plan's ``pad``). "gather":
    # the model keeps the unpadded order and the kernel reads rows through the plan's
    # padded permutation (ordered=False; padding costs no memory pass). "carry": the
    # model carries the padding positions through every layer (ordered=True).
    pad: str | bool = "auto"
    padding: str = "gather"


class AttentionContext:
    """A model's backend switch and its cache of StageAttentions (not in state_dict)."""

    def __init__(self, backend: str = "dense", natives: dict[str, Callable] | None = None,
                 plan_options: PlanOptions | None = None) -> None:
        self.natives = dict(natives or {})
        self.plan_options = plan_options or PlanOptions()
        self._cache: dict[tuple, StageAttention] = {}
        self.plan_seconds = 0.0
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise SparseVitError(f"unknown attention backend {name!r}; choose from "
                                 f"{', '.join(BACKENDS)}")
        self._backend = name

    def clear(self) -> None:
        self._cache.clear()

    def get(self, spec: GraphSpec, batch: int, heads: int, head_dim: int,
            device: torch.device, dtype: torch.dtype) -> StageAttention:
        key = (spec, self.backend, batch, heads, head_dim, str(device), dtype)
        stage = self._cache.get(key)
        if stage is None:
            stage = self._add(key, spec, batch, heads, head_dim, device, dtype)
        return stage

    # Built from numpy, outside torch.compile's graph (a graph break on the first call);
    # a cached stage is looked up inside it, so its layout and attention are traced.
    @torch.compiler.disable
    def _add(self, key: tuple, *build_args: Any) -> StageAttention:
        self._cache[key] = self._build(*build_args)
        return self._cache[key]

    def _build(self, spec: GraphSpec, batch: int, heads: int, head_dim: int,
               device: torch.device, dtype: torch.dtype) -> StageAttention:
        n = build_graph(spec).n_tokens
        backend = self.backend
        if backend == "floor":
            return StageAttention(spec, backend, n, _floor)
        sdpa_dense = backend == "native" or (backend == "sparsevit"
                                             and self.plan_options.dense_layers == "sdpa")
        if backend == "full" or (spec.is_dense and sdpa_dense):
            return StageAttention(spec, backend, n, functional.scaled_dot_product_attention)
        if backend == "dense":
            return StageAttention(spec, backend, n, _sdpa_masked(spec, device))
        if backend == "native":
            native = self.natives.get(spec.kind)
            if native is None:
                raise NotSupportedError(f"no native path for {spec.kind} graphs")
            return native(spec, device)
        if backend == "flex" and spec.is_dense:  # no BlockMask: Flex runs every block
            return StageAttention(spec, backend, n, flex_attend(None, device, {}))
        method = self.plan_options.reorder or reorder_for(spec)
        perm, ordered = ordered_graph(spec, method)
        perm_t = torch.as_tensor(perm, device=device)
        layout = ({} if method == "none" else
                  {"gather": perm_t, "scatter": torch.argsort(perm_t)})
        if backend == "flex":
            info = {"reorder": method}
            attend = flex_attend(tile_block_mask(ordered, device), device, info)
            return StageAttention(spec, backend, n, attend, **layout, info=info)
        return self._sparsevit(spec, ordered, batch, heads, head_dim, device, dtype, layout)

    def _sparsevit(self, spec: GraphSpec, ordered: AttentionGraph, batch: int, heads: int,
                   head_dim: int, device: torch.device, dtype: torch.dtype,
                   layout: dict[str, Tensor]) -> StageAttention:
        """The plan of the already reordered graph (reorder "none"), so the stage layout
        is the reordered one; see PlanOptions.padding for a padded plan."""
        import time

        import sparsevit as sv

        opts = self.plan_options
        t0 = time.perf_counter()
        # Tuned on the form this stage calls: plan order, or original order where a padded
        # plan's rows are gathered (that form's best config differs: no bulk copies).
        plan = sv.plan(ordered, reorder="none", tile=opts.tile, heads=heads,
                       head_dim=head_dim, device=device, batch=batch, pad=opts.pad,
                       dtype=dtype if dtype in (torch.float16, torch.bfloat16)
                       else torch.bfloat16, ordered=None if opts.padding == "gather" else True)
        self.plan_seconds += time.perf_counter() - t0
        padded = plan.n_positions != plan.n_tokens
        if padded and opts.padding == "carry":
            n = plan.n_tokens
            base = layout.get("gather", torch.arange(n, device=device))
            slot = plan.perm.clamp(max=n - 1)
            gather = torch.where(plan.perm < n, base.index_select(0, slot), n)
            scatter = torch.empty_like(base)
            scatter[gather[plan.perm < n]] = torch.nonzero(plan.perm < n).flatten()
            layout = {"gather": gather, "scatter": scatter}
        ordered_form = not padded or opts.padding == "carry"
        plan_id = register_plan(plan, ordered=ordered_form)

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            # Eager calls skip the custom op's dispatch and output checks (~20 µs of host
            # time a call on the H200 host: 93 -> 73 µs); torch.compile traces the op.
            if torch.compiler.is_compiling():
                return planned_attention(q, k, v, plan_id)
            return sv.attention(q, k, v, plan, ordered=ordered_form)

        return StageAttention(spec, "sparsevit", ordered.n_tokens, attend, **layout,
                              info={"plan": plan.describe(), "padding": opts.padding})

