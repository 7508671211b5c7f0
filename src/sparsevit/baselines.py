"""Attention implementations to compare sparsevit with, all on the mask of one AttentionGraph.

Every baseline sees the same inputs: ``q, k, v`` of shape (B, H, N, D), softmax scale
1/sqrt(D), and the mask of the same graph (``Plan.original``, or ``Plan.graph`` for the
``reordered`` ones, which also get inputs already in the plan's token order and return
their output in that order; ``plan``-ordered ones get the plan's ordered form, padding
positions included, see ``Plan.permute``). Dense baselines ignore the mask and say so
in their label: they bound what a dense kernel costs, they do not compute the masked
function.

Empty rows: a query that attends to no key outputs zeros (softmax over an empty set is
taken as all-zero weights). SDPA math and mem-efficient, FlexAttention and sparsevit do
so (checked on an H200, torch 2.11); ``naive`` and ``reference`` follow suit instead of
returning NaN.

torch is imported inside functions so that the registry (names, labels) loads without it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from sparsevit.errors import SparseVitError
from sparsevit.graph import REGIONAL, AttentionGraph

if TYPE_CHECKING:
    from torch import Tensor

ORIGINAL, REORDERED, PLAN_ORDER = "original", "reordered", "plan"
# Beyond this many tokens SDPA's mem-efficient kernel reads the wrong mask rows (seen
# on torch 2.11, H200: 24x over the bf16 tolerance at 65537 tokens).
_MEM_EFFICIENT_MAX_N = 1 << 16
# Elements of one fp32 score chunk in ``reference`` (1 GiB): bounds its memory at any N.
_REFERENCE_CHUNK = 1 << 28


class NotSupportedError(Exception):
    """A baseline cannot run this case; the message says why."""


@dataclass(frozen=True)
class Runnable:
    """A built baseline: ``call()`` runs the timed attention.

    ``setup()``, when present, redoes the per-graph preparation that ``call`` relies on
    (a FlexAttention BlockMask); it is timed separately, never inside ``call``.
    """

    call: Callable[[], Tensor]
    setup: Callable[[], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Baseline:
    label: str
    dense: bool
    order: str  # ORIGINAL, REORDERED or PLAN_ORDER: the token order of inputs and output
    build: Callable[[Any, Tensor, Tensor, Tensor], Runnable]  # (graph or plan, q, k, v)
    needs_plan: bool = False  # cannot run from a bare AttentionGraph


# ----------------------------------------------------------------------- shared pieces


def _graph(source: Any, order: str) -> AttentionGraph:
    """The graph a baseline masks with: the AttentionGraph itself, or the plan's graph."""
    if isinstance(source, AttentionGraph):
        if order != ORIGINAL:
            raise NotSupportedError("needs a plan (sv.plan) for the reordered graph")
        return source
    return source.original if order == ORIGINAL else source.graph


def _require_cuda(q: Tensor, what: str) -> None:
    if q.device.type != "cuda":
        raise NotSupportedError(f"{what} runs on CUDA only")


def mask_rows(adjacency: sp.csr_matrix, start: int, stop: int, device: Any) -> Tensor:
    """Rows ``start:stop`` of a CSR adjacency as a dense bool tensor, built on ``device``."""
    import torch

    ptr = adjacency.indptr
    n = adjacency.shape[1]
    cols = torch.from_numpy(adjacency.indices[ptr[start]:ptr[stop]]).to(device).long()
    counts = torch.from_numpy(np.diff(ptr[start:stop + 1]).astype(np.int64)).to(device)
    rows = torch.repeat_interleave(torch.arange(stop - start, device=device), counts)
    out = torch.zeros(stop - start, n, dtype=torch.bool, device=device)
    out.view(-1)[rows * n + cols] = True
    return out


def dense_mask(graph: AttentionGraph, device: Any) -> Tensor:
    """The N x N bool mask of ``graph`` (True = attend) on ``device``."""
    return mask_rows(graph.adjacency, 0, graph.n_tokens, device)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Materialised masked softmax attention; softmax in fp32, empty rows give zeros.

    Matmuls run in the input dtype, as a user would write them (the GPU accumulates in
    fp32, the scores come out rounded); masking and softmax run in fp32.
    """
    import torch

    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    scores.masked_fill_(~mask, float("-inf"))
    # An all -inf row softmaxes to NaN; with finite inputs that is the only NaN source.
    p = torch.softmax(scores, dim=-1).nan_to_num_(0.0)
    return p.to(v.dtype) @ v


def reference(q: Tensor, k: Tensor, v: Tensor, graph: AttentionGraph | None) -> Tensor:
    """fp32 masked attention of ``graph`` (dense when None), in query chunks so that no
    N x N matrix exists whole; the ground truth of ``bench-attn --check``."""
    import torch

    q, k, v = (t.float() for t in (q, k, v))
    b, h, n, _ = q.shape
    out = torch.empty_like(q)
    step = max(1, _REFERENCE_CHUNK // (b * h * n))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        if graph is None:
            mask = torch.ones(r1 - r0, n, dtype=torch.bool, device=q.device)
        else:
            mask = mask_rows(graph.adjacency, r0, r1, q.device)
        out[:, :, r0:r1] = masked_attention(q[:, :, r0:r1], k, v, mask)
    return out


@functools.cache
def _compiled_masked_attention() -> Callable[..., Tensor]:
    import torch

    return torch.compile(masked_attention, dynamic=False)


# Compiled variants of flex_attention one process may need: every (shape, BlockMask,
# kernel option) compiles anew (fastest_flex tries 7 options per call shape).
FLEX_RECOMPILES = 64


@functools.cache
def compiled_flex() -> Callable[..., Tensor]:
    """torch.compile'd flex_attention. Past dynamo's recompile limit (8 per function) a
    new variant would silently run Flex's unfused eager path instead (seen on an H200:
    ViL-S's later stages at 64 ms whatever the option, or out of memory): the limit is
    raised to FLEX_RECOMPILES, and hitting it raises."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, FLEX_RECOMPILES)
    dynamo.fail_on_recompile_limit_hit = True
    return torch.compile(flex_attention, dynamic=False)


# Flex's kernel tile and pipeline depth are tried per call: its default choice can be far
# off on block-sparse masks (ViL-S's first stage at 2048 px, 262,145 tokens, d = 32, on an
# H200: 75.3 ms by default, 16.9 ms with 64x64 tiles and one stage; its last stage failed
# to compile by default, out of shared memory). A kernel tile must divide the mask block.
FLEX_TILES = ((64, 64), (128, 64), (128, 128))
FLEX_STAGES = (1, 2)


def flex_options(block: int) -> list[dict[str, int] | None]:
    """Candidate ``kernel_options`` for a BlockMask of ``block``-square blocks: Flex's own
    choice (None) where its 128-row default tile fits, then tiles x stages."""
    tiles = [{"BLOCK_M": m, "BLOCK_N": n, "num_stages": st} for m, n in FLEX_TILES
             if block % m == 0 and block % n == 0 for st in FLEX_STAGES]
    return ([None] if block >= 128 else []) + tiles


def fastest_flex(call: Callable[[Any], Tensor], block: int) -> tuple[Any, dict[str, Any]]:
    """(options, timings): the fastest of ``flex_options(block)`` for ``call(options)``
    (compiled and timed in turn, briefly); an option that fails is logged with its error."""
    from sparsevit import timing

    timings: dict[str, Any] = {}
    best_us, best = float("inf"), None
    for options in flex_options(block):
        key = "default" if options is None else "{BLOCK_M}x{BLOCK_N}/s{num_stages}".format(
            **options)
        try:
            us = timing.bench(lambda o=options: call(o), warmup_ms=5, rep_ms=20)["median_us"]
        except Exception as err:  # Inductor raises many kinds: skip the option
            timings[key] = f"failed: {str(err).splitlines()[0][:120]}"
            continue
        timings[key] = round(us, 2)
        if us < best_us:
            best_us, best = us, options
    if best_us == float("inf"):
        raise NotSupportedError(f"no FlexAttention kernel option compiled: {timings}")
    return best, timings


# ---------------------------------------------------------------------------- builders


def _build_naive(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
    mask = dense_mask(_graph(source, ORIGINAL), q.device)
    return Runnable(lambda: masked_attention(q, k, v, mask))


def _build_naive_compiled(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
    _require_cuda(q, "the compiled naive baseline")
    mask = dense_mask(_graph(source, ORIGINAL), q.device)
    fn = _compiled_masked_attention()
    return Runnable(lambda: fn(q, k, v, mask))


def _sdpa(backend: str, masked: bool) -> Callable[..., Runnable]:
    """SDPA pinned to one backend (``sdpa_kernel`` refuses rather than falls back)."""

    def build(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        if backend != "MATH":
            _require_cuda(q, f"SDPA {backend.lower()}")
        if masked and backend == "EFFICIENT_ATTENTION" and q.shape[-2] > _MEM_EFFICIENT_MAX_N:
            raise NotSupportedError(
                f"mem-efficient SDPA with attn_mask silently wraps its 32-bit mask offsets "
                f"beyond {_MEM_EFFICIENT_MAX_N} tokens (pytorch/pytorch#187227)")
        pinned = getattr(SDPBackend, backend)
        mask = dense_mask(_graph(source, ORIGINAL), q.device) if masked else None

        def call() -> Tensor:
            with sdpa_kernel(pinned):
                return sdpa(q, k, v, attn_mask=mask)

        return Runnable(call)

    return build


def _flex(block: int, order: str) -> Callable[..., Runnable]:
    """Compiled FlexAttention; its BlockMask comes from a mask_mod reading our dense mask."""

    def build(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
        _require_cuda(q, "FlexAttention")
        import torch
        from torch.nn.attention.flex_attention import create_block_mask

        graph = _graph(source, order)
        flat = dense_mask(graph, q.device).view(-1)
        n = graph.n_tokens

        def mask_mod(b, h, q_idx, kv_idx):
            # Flex inlines this into Triton with int32 index math, which wraps once N^2 >
            # 2^31 (N > 46340) and reads out of bounds; an explicit int64 offset does not.
            return flat[q_idx.to(torch.int64) * n + kv_idx]

        def setup() -> Any:
            return create_block_mask(mask_mod, None, None, n, n, device=q.device,
                                     BLOCK_SIZE=block, _compile=True)

        block_mask = setup()
        flex = compiled_flex()
        options, timings = fastest_flex(
            lambda o: flex(q, k, v, block_mask=block_mask, kernel_options=o), block)
        # Fraction of blocks Flex computes, comparable with TileSet.stats()["tiles_frac"].
        info = {"flex_blocks_frac": 1.0 - float(block_mask.sparsity()) / 100.0,
                "flex_kernel_options": options, "flex_option_us": timings}
        return Runnable(lambda: flex(q, k, v, block_mask=block_mask, kernel_options=options),
                        setup, info)

    return build


def _build_flash_attn(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
    _require_cuda(q, "flash-attn")
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:
        raise NotSupportedError(f"flash_attn is not importable ({e})") from None
    # Its layout is (B, N, H, D): transpose once here, not inside the timed call.
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return Runnable(lambda: flash_attn_func(qt, kt, vt).transpose(1, 2))


def region_windows(graph: AttentionGraph) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, valid): row w of ``tokens`` lists window w's tokens, padded to the largest
    window (``valid`` marks real slots); regional tokens lead their window.

    Only for graphs whose attention is exactly "every token attends to its own region"
    (RegionViT's local step); anything else raises NotSupportedError.
    """
    region = graph.region
    if (region < 0).any():
        raise NotSupportedError("some tokens belong to no region")
    _, region = np.unique(region, return_inverse=True)
    sizes = np.bincount(region)
    adj = graph.adjacency
    rows = np.repeat(np.arange(graph.n_tokens), np.diff(adj.indptr))
    # Every entry inside its region and nnz = sum of size^2 <=> each region fully attended.
    if graph.nnz != int((sizes.astype(np.int64) ** 2).sum()) or (
        region[rows] != region[adj.indices]
    ).any():
        raise NotSupportedError("attention is not 'each token attends to its own region'")
    order = np.lexsort((graph.kind != REGIONAL, region))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.arange(graph.n_tokens) - starts[region[order]]
    tokens = np.zeros((sizes.shape[0], int(sizes.max())), dtype=np.int64)
    valid = np.zeros(tokens.shape, dtype=bool)
    tokens[region[order], slot] = order
    valid[region[order], slot] = True
    return tokens, valid


def _build_native_window(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
    """RegionViT's own way: gather tokens into windows, batched dense SDPA, scatter back."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tokens, valid = region_windows(_graph(source, ORIGINAL))
    n_win, size = tokens.shape
    b, h, n, d = q.shape
    flat = torch.from_numpy(tokens.ravel()).to(q.device)
    inverse = np.empty(n, dtype=np.int64)
    inverse[tokens[valid]] = np.flatnonzero(valid.ravel())
    inverse_t = torch.from_numpy(inverse).to(q.device)
    # Ragged border windows need a key-padding mask; aligned ones run mask-free (flash).
    key_mask = None
    if not valid.all():
        key_mask = torch.from_numpy(valid).to(q.device).repeat(h, 1).view(1, h * n_win, 1, size)

    def call() -> Tensor:
        qw, kw, vw = (t.index_select(2, flat).view(b, h * n_win, size, d) for t in (q, k, v))
        ow = sdpa(qw, kw, vw, attn_mask=key_mask)
        return ow.view(b, h, n_win * size, d).index_select(2, inverse_t)

    return Runnable(call, info={"windows": n_win, "window_tokens": size})


def kept_tokens(graph: AttentionGraph) -> np.ndarray:
    """Tokens of a DynamicViT-style graph that attend to all kept tokens; every other
    token must attend to itself only. Raises NotSupportedError for any other pattern."""
    adj = graph.adjacency
    n = graph.n_tokens
    degree = np.diff(adj.indptr)
    first = adj.indices[np.minimum(adj.indptr[:-1], max(graph.nnz - 1, 0))]
    kept = np.flatnonzero(~((degree == 1) & (first == np.arange(n))))
    m = kept.shape[0]
    if m == 0:
        raise NotSupportedError("no token attends beyond itself")
    if graph.nnz != m * m + (n - m) or adj[kept][:, kept].nnz != m * m:
        raise NotSupportedError("attention is not 'kept tokens attend to all kept, others to self'")
    return kept


def _build_native_gather(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
    """DynamicViT's own way: dense SDPA over the kept tokens; a dropped token's output is
    its own value (softmax over one key)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    kept = torch.from_numpy(kept_tokens(_graph(source, ORIGINAL))).to(q.device)

    def call() -> Tensor:
        qk, kk, vk = (t.index_select(2, kept) for t in (q, k, v))
        return v.index_copy(2, kept, sdpa(qk, kk, vk))

    return Runnable(call, info={"kept_tokens": int(kept.shape[0])})


def _sparsevit(ordered: bool) -> Callable[..., Runnable]:
    def build(source: Any, q: Tensor, k: Tensor, v: Tensor) -> Runnable:
        _require_cuda(q, "sparsevit's kernel")
        if isinstance(source, AttentionGraph):
            raise NotSupportedError("needs a plan (sv.plan)")
        from sparsevit.ops import attention

        return Runnable(lambda: attention(q, k, v, source, ordered=ordered))

    return build


REGISTRY: dict[str, Baseline] = {
    "naive": Baseline("naive masked softmax (eager)", False, ORIGINAL, _build_naive),
    "naive_compiled": Baseline("naive masked softmax (torch.compile)", False, ORIGINAL,
                               _build_naive_compiled),
    "sdpa_math": Baseline("SDPA math, bool mask", False, ORIGINAL, _sdpa("MATH", True)),
    "sdpa_mem_efficient": Baseline("SDPA mem-efficient, bool mask", False, ORIGINAL,
                                   _sdpa("EFFICIENT_ATTENTION", True)),
    "sdpa_flash": Baseline("SDPA flash (dense)", True, ORIGINAL,
                           _sdpa("FLASH_ATTENTION", False)),
    "sdpa_cudnn": Baseline("SDPA cuDNN (dense)", True, ORIGINAL, _sdpa("CUDNN_ATTENTION", False)),
    **{
        f"flex_b{bs}_{order}": Baseline(f"FlexAttention B{bs}, {order} order", False, order,
                                        _flex(bs, order), needs_plan=order == REORDERED)
        for bs in (64, 128) for order in (ORIGINAL, REORDERED)
    },
    "flash_attn": Baseline("flash-attn package (dense)", True, ORIGINAL, _build_flash_attn),
    "native_window": Baseline("native windows + SDPA (RegionViT)", False, ORIGINAL,
                              _build_native_window),
    "native_gather": Baseline("native kept-token gather + SDPA (DynamicViT)", False, ORIGINAL,
                              _build_native_gather),
    "sparsevit": Baseline("sparsevit (original order, rows gathered)", False, ORIGINAL,
                          _sparsevit(False), needs_plan=True),
    "sparsevit_ordered": Baseline("sparsevit (inputs pre-ordered)", False, PLAN_ORDER,
                                  _sparsevit(True), needs_plan=True),
}


# ----------------------------------------------------------------------------- running


@dataclass
class Prepared:
    """A baseline built and called once (compilation and autotuning happen there)."""

    status: str
    reason: str = ""
    runnable: Runnable | None = None
    out: Tensor | None = None
    build_ms: float | None = None
    first_call_ms: float | None = None


def classify(exc: Exception) -> tuple[str, str]:
    """(status, reason) for an exception a baseline raised: NS, OOM, or FAIL (crash)."""
    import torch

    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, (NotSupportedError, SparseVitError)):
        return "NS", first_line
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "OOM", first_line
    if "No available kernel" in str(exc):  # sdpa_kernel: the pinned backend refused the case
        return "NS", first_line
    return "FAIL", f"crashed: {type(exc).__name__}: {first_line}"


def prepare(name: str, source: Any, q: Tensor, k: Tensor, v: Tensor) -> Prepared:
    """Build baseline ``name`` and call it once; never raises for a case it cannot run.

    ``source`` is an AttentionGraph or a Plan; inputs must already be in the baseline's
    ``order``.
    """
    import torch

    def sync() -> None:
        if q.device.type == "cuda":
            torch.cuda.synchronize(q.device)

    try:
        t0 = time.perf_counter()
        runnable = REGISTRY[name].build(source, q, k, v)
        sync()
        t1 = time.perf_counter()
        out = runnable.call()
        sync()
        t2 = time.perf_counter()
    except Exception as e:  # each baseline fails in its own way; the run goes on
        return Prepared(*classify(e))
    return Prepared("OK", "", runnable, out, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
