"""Baselines on CPU: same function as an independent masked softmax, honest NS elsewhere."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from sparsevit import baselines, bench_attn, masks, timing  # noqa: E402
from sparsevit.errors import SparseVitError  # noqa: E402
from sparsevit.graph import make_graph  # noqa: E402

CPU_BACKENDS = ("naive", "sdpa_math", "native_window", "native_gather")
# Everything else needs CUDA (or a plan); on CPU it must answer NS, not crash.
GPU_BACKENDS = tuple(n for n in baselines.REGISTRY if n not in CPU_BACKENDS)


def ref_attention(q, k, v, adjacency: sp.csr_matrix) -> torch.Tensor:
    """float64 softmax over each row's attended keys; an empty row gives zeros."""
    mask = torch.from_numpy(adjacency.toarray())
    q, k, v = (t.double() for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    s = s.masked_fill(~mask, float("-inf"))
    row_max = s.amax(-1, keepdim=True).clamp(min=-1e300)  # empty rows: keep it finite
    w = torch.exp(s - row_max)
    denom = w.sum(-1, keepdim=True)
    return (w @ v) / torch.where(denom > 0, denom, 1.0)


def qkv(n: int, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, 16, generator=gen).to(dtype) for _ in range(3))


def with_empty_row(graph):
    adj = graph.adjacency.tolil()
    adj[3, :] = False
    return make_graph(adj.tocsr(), "EmptyRow", graph.grid, graph.kind, graph.yx, graph.region)


GRAPHS = {
    "vl": masks.vision_longformer((8, 8), window=5, n_global=1),
    "rvit": masks.regionvit((14, 14), window=7),
    "rvit_ragged": masks.regionvit((10, 9), window=7),
    "dvit": masks.dynamicvit((8, 8), keep=0.3),
}
GRAPHS["empty_row"] = with_empty_row(GRAPHS["vl"])
# Which structured baseline applies to which graph; the others must say NS.
APPLIES = {"native_window": {"rvit", "rvit_ragged"}, "native_gather": {"dvit"}}


@pytest.mark.parametrize("gname", sorted(GRAPHS))
@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_cpu_baselines_match_reference(name, gname):
    graph = GRAPHS[gname]
    q, k, v = qkv(graph.n_tokens)
    prep = baselines.prepare(name, graph, q, k, v)
    if gname not in APPLIES.get(name, set(GRAPHS)):
        assert prep.status == "NS" and prep.reason, prep
        return
    assert prep.status == "OK", prep.reason
    expected = ref_attention(q, k, v, graph.adjacency)
    assert torch.isfinite(prep.out).all()
    torch.testing.assert_close(prep.out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gname", sorted(GRAPHS))
def test_reference_matches_and_chunks(gname, monkeypatch):
    graph = GRAPHS[gname]
    q, k, v = qkv(graph.n_tokens, dtype=torch.bfloat16)
    monkeypatch.setattr(baselines, "_REFERENCE_CHUNK", 2 * 3 * graph.n_tokens * 7)  # 7 rows
    out = baselines.reference(q, k, v, graph)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, graph.adjacency),
                               atol=1e-5, rtol=1e-5)
    dense = baselines.reference(q, k, v, None)
    full = sp.csr_matrix(np.ones((graph.n_tokens,) * 2, dtype=bool))
    torch.testing.assert_close(dense.double(), ref_attention(q, k, v, full), atol=1e-5, rtol=1e-5)


def test_empty_row_gives_zeros():
    graph = GRAPHS["empty_row"]
    q, k, v = qkv(graph.n_tokens)
    for name in ("naive", "sdpa_math"):
        out = baselines.prepare(name, graph, q, k, v).out
        assert torch.equal(out[:, :, 3], torch.zeros_like(out[:, :, 3])), name


def test_naive_bf16_within_check_tolerance():
    graph = GRAPHS["vl"]
    q, k, v = qkv(graph.n_tokens, dtype=torch.bfloat16)
    out = baselines.prepare("naive", graph, q, k, v).out
    result = bench_attn.check_output(out, baselines.reference(q, k, v, graph), "bf16")
    assert result["check"] and result["err_over_tol"] < 0.5, result
    # A wrong mask (the dense function) must not pass, nor may a NaN.
    dense = baselines.reference(q, k, v, None)
    assert not bench_attn.check_output(out, dense, "bf16")["check"]
    out[0, 0, 0, 0] = float("nan")
    assert not bench_attn.check_output(out, dense, "bf16")["check"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer")
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backends_say_ns_on_cpu(name):
    graph = GRAPHS["vl"]
    prep = baselines.prepare(name, graph, *qkv(graph.n_tokens))
    assert prep.status == "NS" and prep.reason and prep.out is None


def test_registry_labels_mark_dense():
    for name, base in baselines.REGISTRY.items():
        assert base.order in (baselines.ORIGINAL, baselines.REORDERED, baselines.PLAN_ORDER), name
        assert ("(dense)" in base.label) == base.dense, name
    assert {n for n, b in baselines.REGISTRY.items() if b.dense} == {
        "sdpa_flash", "sdpa_cudnn", "flash_attn"}
    flex = {n for n in baselines.REGISTRY if n.startswith("flex_")}
    assert flex == {f"flex_b{b}_{o}" for b in (64, 128) for o in ("original", "reordered")}


def test_structure_detection():
    tokens, valid = baselines.region_windows(GRAPHS["rvit_ragged"])
    graph = GRAPHS["rvit_ragged"]
    assert valid.sum() == graph.n_tokens and np.unique(tokens[valid]).size == graph.n_tokens
    assert (graph.kind[tokens[:, 0]] == 2).all()  # regional token leads each window
    kept = baselines.kept_tokens(GRAPHS["dvit"])
    assert kept[0] == 0 and kept.size == 1 + GRAPHS["dvit"].params["kept_tokens"]


def test_flop_and_byte_formulas():
    n, d, h, b = 100, 64, 12, 2
    dense = masks.dense(n)
    assert timing.attention_flops(dense.nnz, d, h, b) == 4 * n * n * d * h * b
    assert timing.attention_flops(GRAPHS["vl"].nnz, d, h, b) == 4 * GRAPHS["vl"].nnz * d * h * b
    assert timing.attention_bytes(n, d, h, b, 2) == 4 * b * h * n * d * 2
    peaks = {"matmul_tflops": 100.0, "copy_gbps": 1000.0}
    assert timing.floor_us(1e12, 1e6, peaks) == pytest.approx(1e4)  # compute-bound: 10 ms
    assert timing.floor_us(1e6, 1e9, peaks) == pytest.approx(1e3)  # memory-bound: 1 ms


def test_cli_bad_input_is_one_line_error(tmp_path):
    parser = argparse.ArgumentParser()
    bench_attn.register(parser.add_subparsers())
    with pytest.raises(SparseVitError, match="unknown backend"):
        bench_attn.select_backends("naive,nope")
    assert bench_attn.select_backends("naive, naive,sparsevit") == ["naive", "sparsevit"]
    args = parser.parse_args(["bench-attn", "--model", "RegionViT", "--resolution", "100"])
    assert args.func is bench_attn.run and args.patch == 16 and args.out.name == "bench_attn"
    with pytest.raises(SparseVitError):
        args.func(args)  # 100 px is not divisible by 16, or no GPU here: one-line error either way
    args = parser.parse_args(["bench-attn", "--input", str(tmp_path / "missing.npz")])
    with pytest.raises(SparseVitError):
        args.func(args)


def test_time_limit_interrupts_and_restores() -> None:
    import signal
    import time

    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(timing.TimeLimitExceeded), timing.time_limit(0.2):
        while True:  # a hung backend: only the limit ends it
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGALRM) is before
    with timing.time_limit(0):  # no limit
        time.sleep(0.01)


def test_backend_over_its_limit_is_tle(monkeypatch) -> None:
    """A backend whose build hangs becomes a TLE row; its own `except Exception` can't
    swallow the interrupt."""
    import time

    def hang(*args, **kwargs):
        try:
            while True:
                time.sleep(0.01)
        except Exception:  # what a baseline's own error handling does
            return None

    monkeypatch.setattr(baselines, "prepare", hang)
    row = bench_attn.measure_backend("sdpa_math", None, (None, None, None), None, "bf16", 1,
                                     1.0, 0.2)
    assert row["status"] == "TLE" and "0.2 s limit" in row["reason"]


def test_flex_options_divide_the_mask_block() -> None:
    """A kernel tile must divide the BlockMask's blocks; Flex's own (128-row) default is
    tried only where it does."""
    for block in (64, 128):
        opts = baselines.flex_options(block)
        assert (None in opts) == (block >= 128)
        tiles = [o for o in opts if o is not None]
        assert tiles and all(block % o["BLOCK_M"] == 0 and block % o["BLOCK_N"] == 0
                             for o in tiles)


def test_fastest_flex_picks_the_fastest_and_skips_failures(monkeypatch) -> None:
    us = {None: 30.0, (64, 64, 1): 10.0, (64, 64, 2): 20.0}

    def fake_bench(fn, **_):
        fn()
        return {"median_us": fake_bench.last}

    def call(options):
        key = None if options is None else (options["BLOCK_M"], options["BLOCK_N"],
                                             options["num_stages"])
        if key not in us:
            raise RuntimeError("out of resource: shared memory\nmore")
        fake_bench.last = us[key]

    monkeypatch.setattr(timing, "bench", fake_bench)
    options, timings = baselines.fastest_flex(call, 128)
    assert options == {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 1}
    assert timings["default"] == 30.0 and timings["64x64/s2"] == 20.0
    assert timings["128x128/s1"].startswith("failed: out of resource")
    with pytest.raises(baselines.NotSupportedError, match="no FlexAttention"):
        baselines.fastest_flex(lambda o: (_ for _ in ()).throw(RuntimeError("x")), 64)
