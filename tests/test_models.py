"""End-to-end models (issue 5) on the CPU: shapes, backend equivalence, bad inputs.

The sparsevit backend runs its Triton kernel in the interpreter (TRITON_INTERPRET=1,
fp32); Flex runs its eager reference path on the CPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sparsevit import masks
from sparsevit.errors import SparseVitError
from sparsevit.models import MODELS, create
from sparsevit.models.attention import (
    AttentionContext,
    GraphSpec,
    build_graph,
    ordered_graph,
    tile_block_mask,
)
from sparsevit.models.dynamicvit import policy_mask
from sparsevit.models.regionvit import DepthwiseConv2d, window_slots
from sparsevit.models.vil import chunk_mask
from sparsevit.models.vit import VisionTransformer

# fp32 on the CPU: every exact backend computes the same masked softmax; only the
# summation order differs.
ATOL = 1e-4
# Smallest images each model takes, so the interpreter stays fast.
TINY = {"ViT-B/16": 32, "ViL-S": 64, "ViL-M": 64, "ViL-S-chunk": 64, "ViL-M-chunk": 64,
        "RegionViT-S": 64, "RegionViT-B": 64, "DynamicViT-S": 64, "DynamicViT-B": 64}


@pytest.fixture(autouse=True)
def _quiet_flex():
    with warnings.catch_warnings():  # Flex's eager CPU path warns that it is slow
        warnings.simplefilter("ignore", UserWarning)
        yield


def logits(model: torch.nn.Module, images: torch.Tensor, backend: str) -> torch.Tensor:
    model.attn_ctx.backend = backend
    with torch.inference_mode():
        return model(images)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_and_native_matches_dense(name: str) -> None:
    torch.manual_seed(0)
    shallow = {"depth": 3} if name == "ViT-B/16" else {}  # 86M random weights are slow to draw
    model = create(name, TINY[name], num_classes=10, **shallow).eval()
    images = torch.randn(2, 3, TINY[name], TINY[name])
    ref = logits(model, images, "dense")
    assert ref.shape == (2, 10) and torch.isfinite(ref).all()
    torch.testing.assert_close(logits(model, images, "native"), ref, atol=ATOL, rtol=0)
    # The floor drops attention: different logits, same shape.
    assert not torch.allclose(logits(model, images, "floor"), ref, atol=ATOL)


@pytest.mark.parametrize("name,size", [("ViL-S", 96), ("ViL-S-chunk", 64), ("RegionViT-S", 96),
                                       ("DynamicViT-S", 64), ("ViT-B/16", 32)])
def test_sparsevit_and_flex_equal_dense(name: str, size: int) -> None:
    """The reorder-once path (tokens reordered per stage, kernel in plan order) and Flex
    on the reordered BlockMask give the unreordered model's logits."""
    torch.manual_seed(1)
    model = create(name, size, num_classes=10).eval()
    images = torch.randn(1, 3, size, size)
    ref = logits(model, images, "dense")
    model.attn_ctx.plan_options.dense_layers = "kernel"
    for backend in ("sparsevit", "flex"):
        torch.testing.assert_close(logits(model, images, backend), ref, atol=ATOL, rtol=0)


def test_padded_plan_gather_and_carry_agree() -> None:
    """RegionViT windows padded to tiles by the planner: read through the plan's padded
    permutation, or carried by the model; both equal dense."""
    torch.manual_seed(2)
    model = create("RegionViT-S", 96, num_classes=10).eval()
    images = torch.randn(1, 3, 96, 96)
    ref = logits(model, images, "dense")
    model.attn_ctx.plan_options.pad = True
    for padding in ("gather", "carry"):
        model.attn_ctx.plan_options.padding = padding
        model.attn_ctx.clear()
        torch.testing.assert_close(logits(model, images, "sparsevit"), ref, atol=ATOL, rtol=0)
        infos = [s.info["plan"] for s in model.attn_ctx._cache.values() if "plan" in s.info]
        assert any(p["positions"] > p["tokens"] for p in infos)


def test_generic_vit_and_state_dict_round_trip() -> None:
    torch.manual_seed(3)
    a = VisionTransformer((32, 48), patch_size=8, depth=2, embed_dim=64, num_heads=2,
                          num_classes=5).eval()
    b = VisionTransformer((32, 48), patch_size=8, depth=2, embed_dim=64, num_heads=2,
                          num_classes=5, attn="native").eval()
    b.load_state_dict(a.state_dict())
    images = torch.randn(3, 3, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(b(images), a(images))
    assert a.n_tokens == 1 + 4 * 6


def test_floor_output_reaches_the_projection_without_a_copy() -> None:
    """The floor's out = v sits in qkv's rows (3C apart); the head merge hands it to the
    output projection as a 2-D view of that memory (addmm takes any row stride), so the
    floor pays no copy or separate bias pass that no real attention would cause."""
    torch.manual_seed(4)
    model = VisionTransformer(32, patch_size=8, depth=1, embed_dim=64, num_heads=2,
                              attn="floor").eval()
    attn = model.blocks[0].attn
    seen: dict[str, torch.Tensor] = {}
    attn.qkv.register_forward_hook(lambda m, i, out: seen.update(qkv=out))
    attn.proj.register_forward_pre_hook(lambda m, i: seen.update(proj_in=i[0]))
    with torch.inference_mode():
        model(torch.randn(2, 3, 32, 32))
    proj_in, qkv = seen["proj_in"], seen["qkv"]
    assert proj_in.dim() == 2 and proj_in.stride() == (3 * 64, 1)
    assert proj_in.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    torch.testing.assert_close(proj_in, qkv[..., 128:].reshape(-1, 64))


def test_regionvit_downsample_is_a_plain_depthwise_conv() -> None:
    """The stage's depthwise conv is nn.Conv2d's (same weights, state_dict keys and
    output; on CUDA it calls torch's depthwise kernel by name, tests/test_kernel_gpu.py)."""
    torch.manual_seed(0)
    conv = create("RegionViT-S", 64).stages[1].downsample[-1]
    assert isinstance(conv, DepthwiseConv2d) and conv.groups == conv.in_channels == 96
    plain = torch.nn.Conv2d(96, 192, 3, stride=2, padding=1, groups=96)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 8, 96).permute(0, 3, 1, 2)  # channels-last, as LayerNorm2d leaves it
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), plain(x))


@pytest.mark.parametrize("name", ["ViL-S", "RegionViT-S"])
@pytest.mark.parametrize("backend", ["native", "floor"])
def test_compiled_model_is_one_graph_once_its_stages_are_built(name, backend,
                                                                monkeypatch) -> None:
    """With every stage cached (one eager call), torch.compile traces the stage lookup:
    the whole forward is one graph (the lookup was a graph break per stage, 7-13 per
    compiled model on the H200) and gives the eager logits. (Row gathers take
    index_select here: Dynamo cannot trace Triton's CPU interpreter.)"""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    model = create(name, TINY[name], attn=backend).eval()
    images = torch.randn(1, 3, TINY[name], TINY[name])
    with torch.inference_mode():
        eager = model(images)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(images)
    torch.testing.assert_close(compiled, eager, atol=ATOL, rtol=0)


def test_native_layouts_match_the_t1_graphs() -> None:
    """ViL's chunk mask and RegionViT's window slots cover exactly the T1 graph."""
    for mode in ("exact", "sliding_chunk"):
        spec = GraphSpec("vil", (17, 10), (("window", 15), ("n_global", 1), ("mode", mode),
                                           ("chunk", 7)))
        dense = build_graph(spec).adjacency.toarray()
        ok = chunk_mask(spec)  # (chunks, 49, 1 + 441)
        h, w = spec.grid
        cols = -(-w // 7)
        for q in range(h * w):
            y, x = divmod(q, w)
            chunk, slot = (y // 7) * cols + x // 7, (y % 7) * 7 + x % 7
            ky, kx = np.divmod(np.flatnonzero(ok[chunk, slot, 1:]), 21)
            keys = (y // 7 * 7 - 7 + ky) * w + (x // 7 * 7 - 7 + kx) + 1
            assert ok[chunk, slot, 0] and set(keys) == set(np.flatnonzero(dense[q + 1, 1:]) + 1)
    spec = GraphSpec("regionvit", (16, 9), (("window", 7),))
    graph = build_graph(spec)
    slots = window_slots(spec)
    n = graph.n_tokens
    for window in slots:
        real = window[window < n]
        block = graph.adjacency[real][:, real].toarray()
        assert block.all() and graph.adjacency[real].nnz == real.size ** 2


def test_flex_block_mask_is_the_graph() -> None:
    """Full blocks + the bitmask mask_mod on partial blocks == the graph, element by element."""
    spec = GraphSpec("vil", (20, 20), (("window", 15), ("n_global", 1), ("mode", "exact"),
                                       ("chunk", 7)))
    _, graph = ordered_graph(spec, "hilbert")
    bm = tile_block_mask(graph, torch.device("cpu"), block=32)
    n = graph.n_tokens
    q, kv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    dense = torch.zeros(n, n, dtype=torch.bool)
    kinds = [(bm.kv_num_blocks, bm.kv_indices, True), (bm.full_kv_num_blocks,
                                                        bm.full_kv_indices, False)]
    for counts, idx, partial in kinds:
        for qb in range(counts.shape[-1]):
            for kb in idx[0, 0, qb, :counts[0, 0, qb]].tolist():
                rows, cols = slice(qb * 32, (qb + 1) * 32), slice(kb * 32, (kb + 1) * 32)
                block = (bm.mask_mod(0, 0, q[rows, cols], kv[rows, cols]) if partial
                         else torch.ones_like(dense[rows, cols]))
                dense[rows, cols] = block
    np.testing.assert_array_equal(dense.numpy(), graph.adjacency.toarray())


def test_dynamicvit_policy_mask_is_the_t1_graph() -> None:
    kept = np.random.default_rng(0).random(12) < 0.5
    keep_all = torch.as_tensor(np.concatenate([[True], kept]))[None]
    graph = masks.dynamicvit((3, 4), keep_mask=kept)
    np.testing.assert_array_equal(policy_mask(keep_all)[0, 0].numpy(),
                                  graph.adjacency.toarray())


def test_dynamicvit_keeps_the_released_token_counts() -> None:
    model = create("DynamicViT-S", 224)
    assert model.kept_counts() == [137, 96, 67]  # int(196 * 0.7^s), as released


@pytest.mark.parametrize("call,message", [
    (lambda: create("ViT-H/14", 224), "unknown model"),
    (lambda: create("ViL-S", 100), "multiple of 32"),
    (lambda: create("RegionViT-S", 200), "multiple of 32"),
    (lambda: create("ViT-B/16", 230), "not divisible by patch 16"),
    (lambda: create("ViL-S", 64, attn="fast"), "unknown attention backend"),
    (lambda: create("ViL-S", 64, depth=3), "ViL-S"),
])
def test_bad_inputs_raise_one_clear_line(call, message: str) -> None:
    with pytest.raises(SparseVitError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_too_large_batch_and_wrong_image_are_refused() -> None:
    model = create("ViT-B/16", 32)
    with pytest.raises(SparseVitError, match="batch 100000000 is too large"):
        model(torch.empty(100_000_000, 3, 32, 32, device="meta"))
    with pytest.raises(SparseVitError, match=r"built for \(B, 3, 32, 32\)"):
        model(torch.randn(1, 3, 64, 64))


def test_flex_block_mask_is_exact_with_full_tiles() -> None:
    """Flex on tile_block_mask equals masked SDPA on a graph with a full 128x128 tile (the
    grouped sliding-chunk order has one; Flex's CPU path evaluates the mask_mod there)."""
    from sparsevit import reorder
    from sparsevit.models.attention import flex_for

    g = masks.vision_longformer((16, 16), mode="sliding_chunk")
    g = reorder.apply(g, reorder.grouped(g))
    block_mask = tile_block_mask(g, torch.device("cpu"))
    assert int(block_mask.full_kv_num_blocks.sum()) > 0
    q, k, v = (torch.randn(1, 2, g.n_tokens, 32) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.as_tensor(g.adjacency.toarray()))
    out = flex_for(torch.device("cpu"))(q, k, v, block_mask=block_mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_eager_sparsevit_calls_the_kernel_directly_compile_traces_the_op(monkeypatch) -> None:
    """Eager calls skip the custom op (its dispatch costs host time); under torch.compile
    the op is what the graph holds, so the model stays one graph around it."""
    from sparsevit.models import attention as model_attention

    ctx = AttentionContext("sparsevit")
    spec = GraphSpec("vil", (6, 7), (("window", 3), ("n_global", 1), ("mode", "exact"),
                                     ("chunk", 1)))
    stage = ctx.get(spec, 1, 2, 32, torch.device("cpu"), torch.float32)
    q, k, v = (torch.randn(1, 2, stage.n_tokens, 32) for _ in range(3))
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.inference_mode():
        compiled = torch.compile(stage.attend, backend=keep_graph, fullgraph=True)(q, k, v)
        targets = [node.target for gm in graphs for node in gm.graph.nodes]
        assert torch.ops.sparsevit.planned_attention.default in targets
        monkeypatch.setattr(model_attention, "planned_attention", None)  # eager: not called
        eager = stage.attend(q, k, v)
    torch.testing.assert_close(compiled, eager, atol=ATOL, rtol=0)
