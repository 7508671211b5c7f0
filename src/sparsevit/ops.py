"""``sparsevit.attention``: run the block-sparse kernel of a plan on (B, H, N, D) tensors."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention
from triton.runtime.errors import OutOfResources
from triton.tools.tensor_descriptor import TensorDescriptor

from sparsevit.errors import SparseVitError
from sparsevit.kernels.block_sparse_attn import LOG2E, block_sparse_attn_fwd
from sparsevit.kernels.dense_attn import dense_attn_fwd
from sparsevit.kernels.gather_rows import copy_rows_at, gather_rows, scatter_rows
from sparsevit.kernels.launch import launch
from sparsevit.planner import Plan
from sparsevit.profile import register_budget

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, ordered: bool) -> None:
    if not (q.shape == k.shape == v.shape) or q.dim() != 4:
        raise SparseVitError(f"q, k, v must share one (B, H, N, D) shape, got "
                             f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    n = plan.n_positions if ordered else plan.n_tokens
    if q.shape[2] != n:
        what = "positions (ordered form, padding included)" if ordered else "tokens"
        raise SparseVitError(f"plan is for {n} {what}, inputs have {q.shape[2]}")
    if q.shape[3] != plan.head_dim:
        raise SparseVitError(f"plan is for head_dim {plan.head_dim}, inputs have {q.shape[3]}")
    if q.dtype not in DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise SparseVitError(f"q, k, v must share a dtype in {DTYPES}, got {q.dtype}")
    if q.device != plan.device:
        raise SparseVitError(f"inputs are on {q.device}, plan on {plan.device}")


# Bulk copies pay off on launches of a few hundred work units and more; on tiny ones the
# three descriptors' host cost outweighs them. scripts/kernel_variants.py on an H200 (bf16,
# d=64, 64x64/w4/s2): VL 4k (816 units) 41.4 µs pointers, 39.7 bulk copies; VL 16k (3,228
# units) 126.7 -> 117.6; RegionViT 16k 49.0 -> 47.9.
TMA_MIN_UNITS = 512
# Capped at 96 registers, a 4-warp bulk-copy program with at most 64x64 score and
# accumulator tiles runs five programs per SM instead of four, but ptxas then waits on
# every wgmma (and spills a few registers at 64x64, 2-3 stages; seen in its SASS). That
# pays on launches of several waves (same run, bulk copies without -> with the cap: VL
# 16k 117.6 -> 115.8 µs, RegionViT 16k 47.9 -> 45.3, DynamicViT 270.8 -> 269.3), not on
# VL 4k's 1.5 waves (39.7 -> 41.0).
TMA_MAXNREG = 96
TMA_MAXNREG_MIN_UNITS = 2048


# The vendor kernels for a plan's dense rectangles, fastest first on Hopper: cuDNN ran a
# 5,620-token dense block (bf16, 12 heads, d=64) in 230 µs on an H200, SDPA's flash in 309.
DENSE_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                  SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
VENDOR = "vendor"
HALF_TYPES = (torch.float16, torch.bfloat16)
# Launch configs of our dense kernel (``kernels.dense_attn``) that ``choose_dense_kernel``
# times against the vendor's. H200, bf16, 12 heads, d=64, 5,621 x 5,621 tokens: 64x128
# w4/s3 217 µs, 128x128 w4/s3 225, 64x64 w4/s3 233, 64x128 w4/s2 231 (cuDNN 230).
DENSE_CONFIGS = ("64x128/w4/s3", "128x128/w4/s3", "64x64/w4/s3", "64x128/w4/s2")
CPU_DENSE_CONFIG = "64x64/w4/s1"  # the interpreter: any tile, one stage


@functools.cache
def _cudnn_direct(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether cuDNN's attention op takes such inputs. Called directly it skips SDPA's
    backend selection and the ``sdpa_kernel`` context: on an H200 host, 19 µs of host
    time per call instead of 34 (1,024 tokens, 12 heads), which a short call waits on.
    fp16 and bf16 only: called directly it does not check the dtype as SDPA's selection
    does (on an H200 it took fp32 inputs without an error and returned NaN)."""
    if device.type != "cuda" or dtype not in HALF_TYPES:
        return False
    probe = torch.zeros(1, 1, 64, head_dim, device=device, dtype=dtype)
    try:
        torch.ops.aten._scaled_dot_product_cudnn_attention(probe, probe, probe, None, False)
    except (RuntimeError, AttributeError):  # no cuDNN attention for this dtype / GPU
        return False
    return True


def _vendor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float) -> torch.Tensor:
    # The vendors' kernels assume 16-byte aligned bases: on an H200, SDPA's memory-efficient
    # kernel faulted (misaligned address) on fp32 inputs one element off the grid.
    if not _tma_ready(q, k, v):
        q, k, v = (t.clone(memory_format=torch.contiguous_format) for t in (q, k, v))
    if _cudnn_direct(q.device, q.dtype, q.shape[-1]):
        return torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, False, scale=scale)[0]
    with sdpa_kernel(DENSE_BACKENDS, set_priority=True):
        return scaled_dot_product_attention(q, k, v, scale=scale)


def _parse_launch(config: str) -> tuple[int, int, int, int]:
    """'64x128/w4/s3' -> (BM, BN, warps, stages)."""
    tile, warps, stages = config.split("/")
    bm, bn = tile.split("x")
    return int(bm), int(bn), int(warps[1:]), int(stages[1:])


def _triton_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  scale: float, config: str, row0: int = 0,
                  out_rows: torch.Tensor | None = None) -> None:
    """Dense attention of q's rows over k, v's keys (B, H, rows/keys, D) into ``out``'s
    rows ``row0 + r`` (or ``out_rows[r]``) with our kernel, launch ``config``. q, k and v
    must be ``_tma_ready`` (bulk copies)."""
    bm, bn, warps, stages = _parse_launch(config)
    bsz, heads, n_rows, d = q.shape
    qd, kd, vd = (TensorDescriptor.from_tensor(t, [1, 1, rows, d])
                  for t, rows in ((q, bm), (k, bn), (v, bn)))
    dense_attn_fwd[(triton.cdiv(n_rows, bm), bsz * heads)](
        qd, kd, vd, out, out if out_rows is None else out_rows, row0, n_rows, k.shape[2],
        heads, scale * LOG2E, *out.stride()[:3],
        BM=bm, BN=bn, HEAD_DIM=d, SCATTER=out_rows is not None, STAGES=stages,
        num_warps=warps, num_stages=stages)


def _dense_engine(plan: Plan, q: torch.Tensor) -> str:
    """The plan's choice (``choose_dense_kernel``); the vendor's where none was made on a
    GPU; our kernel in the CPU interpreter."""
    if not q.is_cuda:
        return CPU_DENSE_CONFIG
    return plan.config.get("dense_kernel", VENDOR)


def _dense_rectangles(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                      plan: Plan, ordered: bool, scale: float) -> None:
    """Write the plan's dense rectangles (rows attending one key range in full) into
    ``out`` with our dense kernel or the vendor's, as the plan chose."""
    engine = _dense_engine(plan, q)
    for i, (r0, r1, c0, c1) in enumerate(plan.dense.tolist()):
        if ordered:
            qs, ks, vs = q[:, :, r0:r1], k[:, :, c0:c1], v[:, :, c0:c1]
            if not _ours(engine, qs, ks, vs, out, scale, row0=r0):
                out[:, :, r0:r1] = _vendor_attention(qs, ks, vs, scale)
            continue
        rows, keys = plan.dense_tokens[i]
        qs, ks, vs = (gather_rows(t, idx, 2) for t, idx in ((q, rows), (k, keys), (v, keys)))
        if not _ours(engine, qs, ks, vs, out, scale, out_rows=rows):  # ours: no scatter pass
            scatter_rows(out, rows, _vendor_attention(qs, ks, vs, scale), 2)


def _ours(engine: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
          scale: float, **rows: object) -> bool:
    """Run the rectangle in our dense kernel if the plan chose it and it can: inputs the
    copy engine can address, and a config that fits this dtype's shared memory (the plan
    timed it on its own dtype; fp32 at head_dim 128 needs twice the bytes). False: the
    caller runs the vendor's kernel."""
    if engine == VENDOR or not _tma_ready(q, k, v):
        return False
    try:
        _triton_dense(q, k, v, out, scale, engine, **rows)
    except OutOfResources:
        return False
    return True


def choose_dense_kernel(spans: np.ndarray, batch: int, heads: int, head_dim: int,
                        dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Time the vendor's dense attention and each of DENSE_CONFIGS on the largest of
    ``spans`` (rows [r0, r1), keys [c0, c1)), plan-ordered random inputs; the fastest
    becomes the plan's ``dense_kernel``. Cached per shape."""
    r0, r1, c0, c1 = max(spans.tolist(), key=lambda s: (s[1] - s[0]) * (s[3] - s[2]))
    chosen, timings = _timed_dense(r1 - r0, c1 - c0, batch, heads, head_dim, dtype, device)
    return {"dense_kernel": chosen, "dense_tuned_us": dict(timings)}  # the cache's own copy


@functools.cache
def _timed_dense(n_rows: int, n_keys: int, batch: int, heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> tuple[str, dict[str, Any]]:
    from sparsevit import timing

    q = torch.randn(batch, heads, n_rows, head_dim, device=device, dtype=dtype)
    k, v = (torch.randn(batch, heads, n_keys, head_dim, device=device, dtype=dtype)
            for _ in range(2))
    out = torch.empty(batch, n_rows, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
    scale = 1.0 / math.sqrt(head_dim)
    runs = {VENDOR: lambda: _vendor_attention(q, k, v, scale)}
    for config in DENSE_CONFIGS:
        runs[config] = functools.partial(_triton_dense, q, k, v, out, scale, config)
    timings: dict[str, Any] = {}
    for name, run in runs.items():
        try:
            timings[name] = round(timing.bench(run, warmup_ms=10, rep_ms=30)["median_us"], 2)
        except OutOfResources:  # e.g. 128-wide tiles at head_dim 128 in fp32
            timings[name] = "out of resources"
    measured = {name: us for name, us in timings.items() if not isinstance(us, str)}
    return min(measured, key=measured.__getitem__), timings


def _tickets(plan: Plan, n_bh: int, device: torch.device,
             stream: torch.cuda.Stream | None) -> torch.Tensor:
    """The split blocks' arrival counters for ``n_bh`` batch*heads on ``stream`` (current):
    zeroed once and kept by the plan (the kernel's last piece resets its counter), so a
    call launches no memset. Calls on one stream run one after another; another stream
    gets its own counters. Counters made during CUDA-graph capture are not kept: their
    zeroing runs only when the graph replays."""
    key = (n_bh, stream.stream_id if stream is not None else 0)
    counters = plan.tickets.get(key)
    if counters is None:
        counters = torch.zeros(max(1, plan.items.split_qb.shape[0] * n_bh), device=device,
                               dtype=torch.int32)
        if device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
            plan.tickets[key] = counters
    return counters


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _fits_maxnreg(bm: int, bn: int, head_dim: int, num_warps: int) -> bool:
    return num_warps == 4 and bm * max(bn, head_dim) <= 64 * 64


@functools.cache
def register_cap(device: torch.device, programs_per_sm: int, num_warps: int) -> int:
    """Registers per thread that let ``programs_per_sm`` programs of ``num_warps`` warps
    share this GPU's SM (``profile.register_budget``). A schedule's occupancy is only real
    under this cap: the same config compiles to 140-178 registers depending on argument
    specialisation (H200, 64x64/w4/s2), and at 178 only two programs fit where the
    schedule placed three."""
    regs = torch.cuda.get_device_properties(device).regs_per_multiprocessor
    return register_budget(regs, programs_per_sm, num_warps)


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Hopper or newer (the CPU interpreter emulates the copies)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether bulk tensor copies can address these (B, H, N, D) tensors: 16-byte aligned
    base and strides (the copy engine's rule)."""
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0
                                              for s in t.stride()[:-1]) for t in tensors)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan,
              ordered: bool = False, scale: float | None = None) -> torch.Tensor:
    """Sparse attention of ``plan``'s graph: softmax(q k^T * scale, masked) v.

    Tensors are (B, H, N, D). With ``ordered=False`` they are in the original token order
    and the kernel gathers rows through the plan's permutation (no extra memory pass);
    with ``ordered=True`` they are already in plan order (see ``Plan.permute``), as a
    model that reorders tokens once keeps them. Rows that attend to nothing give zeros.
    On the CPU (the Triton interpreter) bf16 inputs are computed in fp32.
    The result is the (B, H, N, D) view of a (B, N, H, D) tensor (heads interleaved per
    token, like SDPA's flash output).
    """
    _check(q, k, v, plan, ordered)
    if not q.is_cuda and q.dtype == torch.bfloat16:
        # The CPU interpreter has no bf16 arithmetic (its loads read garbage): run in
        # fp32 and round once at the end.
        return attention(q.float(), k.float(), v.float(), plan, ordered, scale).to(q.dtype)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, heads, n, d = q.shape
    # O in (B, N, H, D) memory, returned as its (B, H, N, D) view, as SDPA's flash and
    # cuDNN kernels return it: a model's head merge, out.transpose(1, 2).reshape(B, N, C),
    # is then a view instead of a copy of every layer's output.
    out = torch.empty(bsz, n, heads, d, device=q.device, dtype=q.dtype).transpose(1, 2)
    a = plan.arrays
    tiles = plan.tiles
    n_bh = bsz * heads
    ws_rows = plan.items.n_slots * n_bh * tiles.bm  # split items' (acc, m, l) rows
    ws = (torch.empty(ws_rows * (d + 2), device=q.device, dtype=torch.float32) if ws_rows
          else a["no_workspace"])
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    if not scale > 0:  # the kernel takes row maxima before scaling
        raise SparseVitError(f"scale must be positive, got {scale}")
    qk_scale = scale * LOG2E
    gather = not ordered
    persistent = plan.programs is not None
    if persistent and n_bh != plan.units_bh:
        raise SparseVitError(f"plan's schedule places work for batch*heads = {plan.units_bh}, "
                             f"inputs have {n_bh}")
    n_units = plan.items.qb.shape[0] * n_bh
    grid = plan.programs[0].shape[0] - 1 if persistent else n_units
    # Ordered rows are contiguous per tile, and so are gathered ones where each block's
    # tokens are consecutive rows (``Plan.runs_in_memory``): the copy engine moves them.
    # Other gathered rows go through the pointer path. The interpreter (CPU) emulates
    # the copies.
    tma = ((ordered or plan.runs_in_memory) and (n_units >= TMA_MIN_UNITS or not q.is_cuda)
           and _has_tma(q.device) and _tma_ready(q, k, v))
    bulk_gather = tma and gather
    qd, kd, vd = ((TensorDescriptor.from_tensor(t, [1, 1, rows, d])
                   for t, rows in ((q, tiles.bm), (k, tiles.bn), (v, tiles.bn)))
                  if tma else (q, k, v))
    warps = plan.config["num_warps"]
    maxnreg = (register_cap(q.device, plan.config["programs_per_sm"], warps)
               if q.is_cuda and plan.config.get("programs_per_sm") else 255)
    if tma and n_units >= TMA_MAXNREG_MIN_UNITS and _fits_maxnreg(tiles.bm, tiles.bn, d, warps):
        maxnreg = min(maxnreg, TMA_MAXNREG)
    copies = plan.self_rows.shape[0] > 0
    stream = torch.cuda.current_stream(q.device) if q.is_cuda else None
    # The dense rectangles run beside the rest (block-sparse launch, self-only rows' copy),
    # on a side stream that starts once the inputs are ready: they write disjoint rows.
    # Launched first, the long dense kernel takes the SMs and the short rest fills them
    # as its last wave drains. Alone, they stay on the current stream (no stream switch
    # on the host).
    side = (_side_stream(q.device) if plan.dense.shape[0] and q.is_cuda and (grid or copies)
            else None)
    if side is not None:
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            _dense_rectangles(q, k, v, out, plan, ordered, scale)
    elif plan.dense.shape[0]:
        _dense_rectangles(q, k, v, out, plan, ordered, scale)
    if copies:  # softmax over a single key is 1: O = V on those rows
        copy_rows_at(out, a["self_positions"] if ordered else a["self_tokens"], v, 2)
    if grid:  # no work items when dense rectangles cover every query block
        args = (qd, kd, vd, k, v, out, ws, ws_rows, plan.perm,
                a["query_rows"] if bulk_gather else a["items"],  # (items: a pointer not read)
                a["items"], a["tiles_memory"] if bulk_gather else a["tiles"], a["bitmasks"],
                a["splits"], _tickets(plan, n_bh, q.device, stream), a["prog_ptr"],
                a["prog_units"], plan.n_positions, n, heads, n_bh, qk_scale,
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
        constexprs = dict(BM=tiles.bm, BN=tiles.bn, HEAD_DIM=d, NW=tiles.words_per_row,
                          GATHER=gather, PERSISTENT=persistent, INLINE_PTX=q.is_cuda,
                          ONE_LOOP=plan.config.get("one_loop", False), TMA=tma,
                          SPLITS=bool(plan.items.split_qb.shape[0]))
        options = dict(num_warps=warps, num_stages=plan.config["num_stages"],
                       **({"maxnreg": maxnreg} if maxnreg < 255 else {}))
        launch(block_sparse_attn_fwd, grid, args, constexprs, options, stream)
    if side is not None:
        stream.wait_stream(side)
    return out
