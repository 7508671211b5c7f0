"""The block-sparse kernel against an fp64 dense masked-softmax reference.

Runs the real Triton kernel: on the CPU through TRITON_INTERPRET=1 (set by `make test`),
on a GPU when one is present. The bf16 kernel is checked on the GPU only
(tests/test_kernel_gpu.py): the CPU interpreter has no bf16 arithmetic, so on the CPU
``sv.attention`` runs bf16 inputs in fp32.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import sparsevit as sv  # noqa: E402
from sparsevit.errors import SparseVitError  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 dots run as tf32 on a GPU (errors near 1e-3); exact fp32 in the interpreter.
FP32_TOL = 1e-5 if DEVICE == "cpu" else 2e-3
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU: run with TRITON_INTERPRET=1 (make test does)", allow_module_level=True)

N_FUZZ = 200


def reference(q, k, v, adjacency) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over attended keys only; rows with no keys give 0."""
    mask = torch.as_tensor(adjacency.toarray(), device=q.device)
    s = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return p @ v.double()


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def random_graph(rng: np.random.Generator):
    """A random mask with the awkward cases mixed in: empty, global and dense rows."""
    n = int(rng.integers(1, 140))
    style = rng.choice(["random", "global", "empty_rows", "dense", "window", "block_dense"])
    if style == "dense":
        adj = np.ones((n, n), bool)
    elif style == "window":
        side = int(rng.integers(1, 12))
        g = sv.masks.vision_longformer((side, side + 1), window=int(rng.choice([1, 3, 5])),
                                       n_global=int(rng.integers(0, 3)))
        return g
    elif style == "block_dense":  # full-only tiles: aligned dense diagonal blocks
        b = int(rng.choice([16, 32]))
        n = b * int(rng.integers(1, 5))
        adj = np.kron(np.eye(n // b, dtype=bool), np.ones((b, b), bool))
    else:
        adj = rng.random((n, n)) < rng.uniform(0.01, 0.6)
        if style == "global":
            adj[rng.integers(0, n), :] = True
            adj[:, rng.integers(0, n)] = True
        if style == "empty_rows":
            adj[rng.random(n) < 0.3, :] = False
    return sv.masks.from_matrix(sp.csr_matrix(adj))


def case_params(i: int):
    rng = np.random.default_rng(1000 + i)
    graph = random_graph(rng)
    tile = (int(rng.choice([16, 32, 64])), int(rng.choice([16, 32, 64, 128])))
    head_dim = int(rng.choice([16, 32, 64, 128], p=[0.2, 0.35, 0.35, 0.1]))
    dtype = [torch.float16, torch.float32][int(rng.integers(0, 2))]
    max_tiles = [None, 1, 2][int(rng.integers(0, 3))]  # 1-2 forces split heavy rows
    reorder = str(rng.choice(["none", "rcm", "hc", "ic"]))
    batch, heads = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    return graph, tile, head_dim, dtype, max_tiles, reorder, batch, heads


@pytest.mark.parametrize("i", range(N_FUZZ))
def test_fuzz_matches_reference(i: int) -> None:
    graph, tile, d, dtype, max_tiles, reorder, b, h = case_params(i)
    # Every 4th case hands its dense rectangles (if any) to the vendor kernel.
    plan = sv.plan(graph, reorder=reorder, tile=tile, heads=h, head_dim=d, device=DEVICE,
                   max_tiles=max_tiles, dtype=dtype, dense=i % 4 == 0)
    gen = torch.Generator().manual_seed(i)
    q, k, v = (torch.randn(b, h, graph.n_tokens, d, generator=gen).to(DEVICE, dtype)
               for _ in range(3))
    ref = reference(q, k, v, graph.adjacency)
    out = sv.attention(q, k, v, plan)
    assert not out.isnan().any()
    assert rel_err(out, ref) < (FP32_TOL if dtype == torch.float32 else 2e-3)
    empty = np.diff(graph.adjacency.indptr) == 0
    if empty.any():  # rows with no keys are exactly zero
        assert (out[:, :, torch.as_tensor(empty)] == 0).all()
    # The ordered form on pre-permuted tensors gives the same result.
    ordered = sv.attention(plan.permute(q), plan.permute(k), plan.permute(v), plan, ordered=True)
    assert torch.equal(plan.unpermute(ordered), out)


def test_split_rows_merge_in_the_last_piece() -> None:
    """A global row split over many items merges to the same output as unsplit (the last
    piece to finish merges the others), call after call and for another batch size: the
    arrival counters are back at zero after every launch."""
    g = sv.masks.vision_longformer((12, 12), window=3, n_global=2)
    q, k, v = (torch.randn(2, 2, g.n_tokens, 32).to(DEVICE) for _ in range(3))
    plans = [sv.plan(g, reorder="none", tile=(16, 16), heads=2, head_dim=32, device=DEVICE,
                     max_tiles=max_tiles) for max_tiles in (None, 1)]
    split = plans[1]
    assert split.items.split_qb.shape[0] > 1 and split.items.max_pieces > 2
    ref = reference(q, k, v, g.adjacency)
    for _ in range(2):
        outs = [sv.attention(q, k, v, p) for p in plans]
        assert rel_err(outs[1], ref) < FP32_TOL
        assert rel_err(outs[0], outs[1]) < FP32_TOL  # split or not: the same up to rounding
    one = sv.attention(q[:1], k[:1], v[:1], split)
    assert rel_err(one, ref[:1]) < FP32_TOL
    assert len(split.tickets) == 2  # one set of counters per batch*heads
    assert all(int(t.abs().sum()) == 0 for t in split.tickets.values())


def test_output_heads_interleaved_per_token() -> None:
    """O comes back as the (B, H, N, D) view of (B, N, H, D) memory (SDPA flash's
    layout), so a model's head merge is a view; split rows (the combine pass) and
    strided q, k, v views land in that layout too."""
    g = sv.masks.vision_longformer((6, 7), window=3, n_global=1)
    b, h, d = 2, 3, 32
    qkv = torch.randn(b, g.n_tokens, 3, h, d).to(DEVICE)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # a model's strided views
    plan = sv.plan(g, reorder="hilbert", tile=(16, 16), heads=h, head_dim=d, device=DEVICE,
                   max_tiles=1)
    assert plan.items.split_qb.shape[0] > 0
    out = sv.attention(q, k, v, plan)
    merged = out.transpose(1, 2).reshape(b, g.n_tokens, h * d)
    assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous()
    assert rel_err(out, reference(q, k, v, g.adjacency)) < FP32_TOL


def test_launch_order_longest_first() -> None:
    g = sv.masks.vision_longformer((16, 16), window=5, n_global=1)
    plan = sv.plan(g, reorder="none", tile=(16, 16), head_dim=32, device=DEVICE)
    cost = plan.items.cost
    assert (np.diff(cost) <= 0).all()
    # Full tiles precede partial ones inside every item.
    t = plan.tiles
    for t0, tmid, t1 in zip(plan.items.t0, plan.items.tmid, plan.items.t1, strict=True):
        assert t.full[t0:tmid].all() and not t.full[tmid:t1].any()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 2, 10, 32), torch.float32, "tokens"),
        ((1, 2, 64 + 1, 16), torch.float32, "head_dim"),
        ((1, 2, 64 + 1, 32), torch.int32, "dtype"),
    ],
)
def test_bad_inputs(shape, dtype, message) -> None:
    g = sv.masks.vision_longformer((8, 8), window=3)
    plan = sv.plan(g, reorder="none", tile=(16, 16), head_dim=32, device=DEVICE)
    x = torch.zeros(shape, dtype=dtype, device=DEVICE)
    with pytest.raises(SparseVitError, match=message):
        sv.attention(x, x, x, plan)


def test_bad_plan_arguments() -> None:
    g = sv.masks.vision_longformer((8, 8), window=3)
    with pytest.raises(SparseVitError, match="head_dim"):
        sv.plan(g, head_dim=48, device=DEVICE)
    with pytest.raises(SparseVitError, match="tile"):
        sv.plan(g, tile="64x48", device=DEVICE)
    with pytest.raises(SparseVitError, match="reorder"):
        sv.plan(g, reorder="zigzag", device=DEVICE)


def _schedule(graph, plan, n_programs: int, rng: np.random.Generator, **over):
    """A schedule object as sparsevit.schedule makes them: random placement of the units."""
    n_units = plan.items.qb.shape[0] * plan.heads
    cuts = np.sort(rng.integers(0, n_units + 1, n_programs - 1))
    fields = {"method": "test", "n_tokens": graph.n_tokens, "batch": 1, "heads": plan.heads,
              "head_dim": plan.head_dim, "config": {"bm": 16, "bn": 16, "num_warps": 4,
                                                    "num_stages": 2},
              "max_tiles": 2, "n_items": int(plan.items.qb.shape[0]), "predicted_us": 1.0,
              "programs": {"ptr": [0, *cuts.tolist(), n_units],
                           "units": rng.permutation(n_units).tolist()},
              "dense_spans": lambda: np.zeros((0, 4), np.int64)}
    fields.update(over)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize("n_programs", [1, 3, 40])
def test_persistent_schedule_matches_grid_launch(n_programs: int) -> None:
    """Any placement of the work units over persistent programs gives the same output."""
    rng = np.random.default_rng(n_programs)
    g = sv.masks.vision_longformer((10, 10), window=3, n_global=1)
    q, k, v = (torch.randn(1, 2, g.n_tokens, 32).to(DEVICE) for _ in range(3))
    grid_plan = sv.plan(g, reorder="hilbert", tile=(16, 16), heads=2, head_dim=32,
                        device=DEVICE, max_tiles=2)
    sched = _schedule(g, grid_plan, n_programs, rng)
    plan = sv.plan(g, reorder="hilbert", heads=2, head_dim=32, device=DEVICE, schedule=sched)
    assert plan.config["programs"] == n_programs and plan.items.split_qb.shape[0] > 0
    out = sv.attention(q, k, v, plan)
    assert rel_err(out, reference(q, k, v, g.adjacency)) < FP32_TOL
    assert torch.allclose(out, sv.attention(q, k, v, grid_plan), atol=1e-6)


def test_bad_schedules() -> None:
    rng = np.random.default_rng(0)
    g = sv.masks.vision_longformer((10, 10), window=3, n_global=1)
    base = sv.plan(g, reorder="hilbert", tile=(16, 16), heads=2, head_dim=32, device=DEVICE,
                   max_tiles=2)
    good = _schedule(g, base, 4, rng)
    cases = {
        "tokens": {"n_tokens": g.n_tokens + 1},
        "work items": {"n_items": good.n_items + 1},
        "exactly once": {"programs": {"ptr": [0, 1], "units": [0]}},
        "ptr": {"programs": {**good.programs, "ptr": good.programs["ptr"][::-1]}},
    }
    for message, over in cases.items():
        with pytest.raises(SparseVitError, match=message):
            sv.plan(g, reorder="hilbert", heads=2, head_dim=32, device=DEVICE,
                    schedule=_schedule(g, base, 4, rng, **over))
    plan = sv.plan(g, reorder="hilbert", heads=2, head_dim=32, device=DEVICE, schedule=good)
    x = torch.zeros(2, 2, g.n_tokens, 32, device=DEVICE)
    with pytest.raises(SparseVitError, match="batch\\*heads"):
        sv.attention(x, x, x, plan)


@pytest.mark.parametrize("case", ["vl_global", "regionvit", "dynamicvit"])
def test_padded_layout_gather_and_ordered(case: str) -> None:
    """Padding positions: gathered inputs need none, the ordered form carries them as
    zero rows, and both give the reference output."""
    graph = {"vl_global": lambda: sv.masks.vision_longformer((9, 11), window=3, n_global=2),
             "regionvit": lambda: sv.masks.regionvit((14, 14), window=7),
             "dynamicvit": lambda: sv.masks.dynamicvit((12, 12), keep=0.4)}[case]()
    plan = sv.plan(graph, reorder="rcm" if case != "vl_global" else "hilbert", tile=(16, 16),
                   heads=2, head_dim=32, device=DEVICE, pad=True)
    assert plan.n_positions > plan.n_tokens and plan.config["padded"]
    assert plan.tiles.stats()["full"] + plan.tiles.stats()["column"] > 0
    q, k, v = (torch.randn(1, 2, graph.n_tokens, 32).to(DEVICE) for _ in range(3))
    ref = reference(q, k, v, graph.adjacency)
    out = sv.attention(q, k, v, plan)
    assert rel_err(out, ref) < FP32_TOL
    qo, ko, vo = (plan.permute(t) for t in (q, k, v))
    assert qo.shape[2] == plan.n_positions
    pad_rows = plan.perm.cpu().numpy() == graph.n_tokens
    assert pad_rows.sum() == plan.n_positions - plan.n_tokens and not qo[:, :, pad_rows].any()
    assert torch.equal(plan.unpermute(qo), q)
    ordered = sv.attention(qo, ko, vo, plan, ordered=True)
    assert torch.allclose(plan.unpermute(ordered), out, atol=1e-6)
    with pytest.raises(SparseVitError, match="positions"):
        sv.attention(q, k, v, plan, ordered=True)


def test_pad_auto_picks_the_cheaper_layout() -> None:
    from sparsevit.planner import tile_cost

    g = sv.masks.regionvit((14, 14), window=7)
    plans = {pad: sv.plan(g, reorder="rcm", tile=(64, 64), head_dim=32, device=DEVICE, pad=pad)
             for pad in ("auto", True, False)}
    costs = {pad: tile_cost(p.tiles) for pad, p in plans.items()}
    assert costs["auto"] == min(costs[True], costs[False])
    with pytest.raises(SparseVitError, match="pad"):
        sv.plan(g, device=DEVICE, pad="yes")


@pytest.mark.parametrize("rows_per_pass", [1 << 15, 5])
@pytest.mark.parametrize("nw", [1, 2, 4])
def test_kernel_bitmasks_interleave_columns(nw: int, rows_per_pass: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsevit.kernels import block_sparse_attn
    from sparsevit.kernels.block_sparse_attn import kernel_bitmasks

    monkeypatch.setattr(block_sparse_attn, "_ROWS_PER_PASS", rows_per_pass)
    bits = np.random.default_rng(nw).random((3, 8, 32 * nw)) < 0.5
    words = np.packbits(bits, axis=2, bitorder="little").view(np.int32)  # TileSet layout
    dev = kernel_bitmasks(words).reshape(3, 8, nw).view(np.uint32)
    col = np.arange(32 * nw)
    got = (dev[:, :, col % nw] >> (col // nw).astype(np.uint32)) & 1
    assert (got.astype(bool) == bits).all()


@pytest.mark.parametrize("ordered", [False, True])
def test_bf16_matches_fp32(ordered: bool) -> None:
    """bf16 inputs give the fp32 result within bf16 rounding, in (B, N, H, D) memory (the
    interpreter computes them in fp32: it has no bf16 arithmetic)."""
    g = sv.masks.vision_longformer((10, 10), window=3)
    plan = sv.plan(g, reorder="hilbert", tile=(32, 32), heads=2, head_dim=32, device=DEVICE)
    q, k, v = (torch.randn(1, 2, g.n_tokens, 32).to(DEVICE) for _ in range(3))
    if ordered:
        q, k, v = (plan.permute(t) for t in (q, k, v))
    ref = sv.attention(q, k, v, plan, ordered=ordered)
    out = sv.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), plan, ordered=ordered)
    assert out.dtype == torch.bfloat16 and out.transpose(1, 2).is_contiguous()
    assert rel_err(out.float(), ref) < 1e-2


def test_scale_must_be_positive() -> None:
    g = sv.masks.vision_longformer((4, 4), window=3)
    plan = sv.plan(g, reorder="none", tile=(16, 16), head_dim=32, device=DEVICE)
    q = torch.randn(1, 1, g.n_tokens, 32).to(DEVICE)
    with pytest.raises(SparseVitError, match="scale"):
        sv.attention(q, q, q, plan, scale=-1.0)


@pytest.mark.parametrize("name", ["VisionLongformer", "DynamicViT"])
def test_one_loop_and_three_loops_agree(name: str) -> None:
    g = sv.masks.MODEL_GRAPHS[name]((8, 8))
    plan = sv.plan(g, reorder="rcm", tile=(16, 16), heads=1, head_dim=32, device=DEVICE)
    q, k, v = (torch.randn(1, 1, g.n_tokens, 32, generator=torch.Generator().manual_seed(s))
               .to(DEVICE) for s in range(3))
    outs = {}
    for one in (False, True):
        plan.config["one_loop"] = one
        outs[one] = sv.attention(q, k, v, plan)
    assert rel_err(outs[True], reference(q, k, v, g.adjacency)) < FP32_TOL
    assert rel_err(outs[True], outs[False]) < FP32_TOL


@pytest.mark.parametrize(("name", "tile"), [("dynamicvit", (16, 32)), ("dynamicvit", (32, 16)),
                                            ("dense", (32, 32))])
def test_dense_rectangles_in_a_dense_kernel(name: str, tile: tuple[int, int]) -> None:
    """Query blocks attending one key range in full run in the dense kernel (none of their
    work items remain); the rest runs tile by tile. Both forms give the reference. A fully
    dense graph leaves the block-sparse kernel nothing to launch."""
    graph = (sv.masks.dynamicvit((14, 14), keep=0.5) if name == "dynamicvit"
             else sv.masks.from_matrix(np.ones((128, 128), bool)))
    plan = sv.plan(graph, reorder="rcm", tile=tile, heads=2, head_dim=32, device=DEVICE,
                   dense=True)
    tiles_only = sv.plan(graph, reorder="rcm", tile=tile, heads=2, head_dim=32, device=DEVICE,
                         dense=False)
    assert plan.dense.shape[0] >= 1 and plan.config["dense"] == plan.dense.tolist()
    assert plan.items.qb.shape[0] < tiles_only.items.qb.shape[0]
    covered = plan.dense[:, 0] // tile[0]
    assert not np.isin(plan.items.qb, covered).any()
    q, k, v = (torch.randn(2, 2, graph.n_tokens, 32).to(DEVICE) for _ in range(3))
    ref = reference(q, k, v, graph.adjacency)
    out = sv.attention(q, k, v, plan)
    assert rel_err(out, ref) < FP32_TOL
    ordered = sv.attention(*(plan.permute(t) for t in (q, k, v)), plan, ordered=True)
    assert rel_err(plan.unpermute(ordered), ref) < FP32_TOL
    if name == "dense":
        assert plan.items.qb.shape[0] == plan.tiles.n_query_blocks - plan.dense[0, 1] // tile[0]


@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (16, 32)])
def test_self_only_rows_are_copied_from_v(tile: tuple[int, int]) -> None:
    """DynamicViT's pruned tokens attend only themselves: their output is their value row,
    copied (exactly), and their query blocks get no work items. Both forms give the
    reference."""
    graph = sv.masks.dynamicvit((14, 14), keep=0.5)
    plan = sv.plan(graph, reorder="rcm", tile=tile, heads=2, head_dim=32, device=DEVICE,
                   dense=True)
    assert plan.self_rows.shape[0] >= 1
    at = np.concatenate([np.arange(r0, r1) for r0, r1 in plan.self_rows.tolist()])
    assert not np.isin(plan.items.qb, at // tile[0]).any()
    assert plan.describe()["self_rows"] == at.size
    q, k, v = (torch.randn(2, 2, graph.n_tokens, 32).to(DEVICE) for _ in range(3))
    out = sv.attention(q, k, v, plan)
    assert rel_err(out, reference(q, k, v, graph.adjacency)) < FP32_TOL
    tokens = plan.perm[torch.as_tensor(at, device=plan.perm.device)]
    assert torch.equal(out[:, :, tokens], v[:, :, tokens])
    ordered = sv.attention(*(plan.permute(t) for t in (q, k, v)), plan, ordered=True)
    assert torch.equal(plan.unpermute(ordered), out)


def test_copied_rows_beside_a_dense_kernel_or_when_many(monkeypatch) -> None:
    """A few self-only rows stay diagonal tiles (a copy launch costs more); beside a dense
    kernel, or from COPY_MIN_ROWS rows on, they are copied."""
    from sparsevit import planner

    lay = planner.tile_layout(sv.masks.from_matrix(sp.eye(100, dtype=bool, format="csr")),
                              (16, 16), pad=False)
    assert lay.self_rows.tolist() == [[0, 100]]
    assert planner.copied_rows(lay).size == 0
    assert not planner.idle_blocks(lay).any()
    assert planner.copied_rows(lay, np.array([[0, 16, 0, 16]])).tolist() == [[16, 100]]
    monkeypatch.setattr(planner, "COPY_MIN_ROWS", 100)
    assert planner.copied_rows(lay).tolist() == [[0, 100]]
    assert planner.idle_blocks(lay).all()
    # A dense rectangle's rows stay with it, even a 1 x 1 one that is a self-only row.
    assert planner.copied_rows(lay, np.array([[96, 100, 96, 100]])).tolist() == [[0, 96]]


@pytest.mark.parametrize("ordered", [False, True])
def test_copied_rows_without_a_dense_kernel(monkeypatch, ordered: bool) -> None:
    """From COPY_MIN_ROWS rows on the copy runs alone beside the block-sparse kernel."""
    from sparsevit import planner

    monkeypatch.setattr(planner, "COPY_MIN_ROWS", 1)
    graph = sv.masks.dynamicvit((14, 14), keep=0.5)
    plan = sv.plan(graph, reorder="rcm", tile=(16, 16), heads=2, head_dim=32, device=DEVICE,
                   dense=False)
    assert plan.dense.size == 0 and plan.self_rows.size and plan.items.qb.size
    q, k, v = (torch.randn(1, 2, graph.n_tokens, 32).to(DEVICE) for _ in range(3))
    ref = reference(q, k, v, graph.adjacency)
    if ordered:
        out = plan.unpermute(sv.attention(*(plan.permute(t) for t in (q, k, v)), plan,
                                          ordered=True))
    else:
        out = sv.attention(q, k, v, plan)
    assert rel_err(out, ref) < FP32_TOL


def test_dense_option_checked_and_auto_keeps_small_rectangles_tiled() -> None:
    g = sv.masks.dynamicvit((14, 14), keep=0.5)
    with pytest.raises(SparseVitError, match="dense"):
        sv.plan(g, device=DEVICE, head_dim=32, dense="yes")
    # "auto" only hands over rectangles of DENSE_MIN_TOKENS rows and keys.
    assert sv.plan(g, reorder="rcm", tile=(16, 16), head_dim=32, device=DEVICE).dense.size == 0


@pytest.mark.parametrize(("tile", "max_tiles", "reorder"),
                         [((16, 16), None, "hilbert"), ((32, 16), 1, "none"),
                          ((16, 32), None, "rcm")])
def test_lead_keys_fold_global_columns(tile, max_tiles, reorder) -> None:
    """A global token's key column (one key per tile that every row attends) becomes the
    lead of its query blocks: outside every item's tile range, folded into the softmax's
    start on the first item only, in both the gathered and the ordered form."""
    g = sv.masks.vision_longformer((10, 13), window=3, n_global=1)
    plan = sv.plan(g, reorder=reorder, tile=tile, heads=2, head_dim=32, device=DEVICE,
                   max_tiles=max_tiles)
    items, tiles = plan.items, plan.tiles
    leads = sv.planner.lead_tiles(tiles)
    assert (leads >= 0).sum() >= tiles.n_query_blocks // 2
    first = tiles.row_ptr[:-1]
    for qb in np.flatnonzero(leads >= 0):  # the lead key is the tile's one attended key
        key = tiles.dense_mask()[qb * tiles.bm:(qb + 1) * tiles.bm,
                                 tiles.col_block[first[qb]] * tiles.bn:][:, :tiles.bn]
        assert np.flatnonzero(key.any(0)).tolist() == [leads[qb] % tiles.bn]
        assert first[qb] not in {t for i in np.flatnonzero(items.qb == qb)
                                 for t in range(items.t0[i], items.t1[i])}
        assert (items.lead[items.qb == qb] >= 0).sum() == 1
    assert int((items.t1 - items.t0).sum()) == tiles.n_tiles - int((leads >= 0).sum())
    q, k, v = (torch.randn(1, 2, g.n_tokens, 32, generator=torch.Generator().manual_seed(s))
               .to(DEVICE) for s in range(3))
    ref = reference(q, k, v, g.adjacency)
    out = sv.attention(q, k, v, plan)
    assert rel_err(out, ref) < FP32_TOL
    ordered = sv.attention(*(plan.permute(t) for t in (q, k, v)), plan, ordered=True)
    assert rel_err(plan.unpermute(ordered), ref) < FP32_TOL


@pytest.mark.parametrize(("case", "tile"), [("vil_chunk", (16, 16)), ("vil_chunk", (32, 16)),
                                            ("regionvit", (16, 16))])
def test_gathered_runs_move_by_bulk_copies(case: str, tile: tuple[int, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A padded plan of an already reordered graph (as a model that keeps the unpadded
    plan order builds it) keeps each block's tokens in consecutive rows: original-order
    inputs then take the bulk-copy path, reading rows of the next tokens at padding
    positions, and still give the reference output. A plan that reorders does not."""
    from sparsevit import ops, reorder

    graph = {"vil_chunk": lambda: sv.masks.vision_longformer(
                 (9, 12), window=5, n_global=1, mode="sliding_chunk", chunk=2),
             "regionvit": lambda: sv.masks.regionvit((14, 14), window=7)}[case]()
    method = "grouped" if case == "vil_chunk" else "tiled"
    kwargs = {"tile": (7, 7)} if case == "regionvit" else {}
    raw, graph = graph, reorder.apply(graph, reorder.get(method)(graph, **kwargs))
    plan = sv.plan(graph, reorder="none", tile=tile, heads=2, head_dim=32, device=DEVICE,
                   pad=True)
    assert plan.n_positions > plan.n_tokens and plan.runs_in_memory
    described = []
    real_descriptor = ops.TensorDescriptor.from_tensor
    monkeypatch.setattr(ops.TensorDescriptor, "from_tensor", lambda t, block: (
        described.append(tuple(block)) or real_descriptor(t, block)))
    q, k, v = (torch.randn(1, 2, graph.n_tokens, 32, generator=torch.Generator().manual_seed(s))
               .to(DEVICE) for s in range(3))
    out = sv.attention(q, k, v, plan)
    assert described == [(1, 1, tile[0], 32), (1, 1, tile[1], 32), (1, 1, tile[1], 32)]
    assert rel_err(out, reference(q, k, v, graph.adjacency)) < FP32_TOL
    reordering = sv.plan(raw, reorder=method, tile=tile, heads=2, head_dim=32, device=DEVICE,
                         pad=True)
    assert not reordering.runs_in_memory


def test_launch_signature_keys_what_triton_specializes_on() -> None:
    """Repeat launches (``kernels.launch``) reuse a compiled kernel only for an equal
    signature: tensors by dtype and 16-byte alignment (not by address), ints exactly,
    floats by type alone, descriptors by shape, strides and block."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from sparsevit.kernels.launch import launch_signature

    def sig(*args, **constexprs):
        return launch_signature(args, constexprs, {"num_warps": 4})

    a, b = torch.zeros(64), torch.zeros(64)
    assert sig(a, 16, 0.5, BM=64) == sig(b, 16, 0.25, BM=64)
    assert sig(a, 16, BM=64) != sig(a[1:], 16, BM=64)  # off the 16-byte grid
    assert sig(a, 16, BM=64) != sig(a.double(), 16, BM=64)
    assert sig(a, 16, BM=64) != sig(a, 17, BM=64)
    assert sig(a, 16, BM=64) != sig(a, 16, BM=128)
    x = torch.zeros(1, 2, 128, 64)
    d = TensorDescriptor.from_tensor(x, [1, 1, 64, 64])
    assert sig(d) == sig(TensorDescriptor.from_tensor(torch.ones(1, 2, 128, 64), [1, 1, 64, 64]))
    assert sig(d) != sig(TensorDescriptor.from_tensor(x, [1, 1, 32, 64]))
    assert sig(d) != sig(TensorDescriptor.from_tensor(torch.zeros(1, 2, 256, 64), [1, 1, 64, 64]))
