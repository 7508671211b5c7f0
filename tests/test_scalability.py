"""The scalability ladder's cells (graph, patch, resolution, method) reach the attention
benchmark as the right q/k/v shape and graph; and the profiling analysis."""

from __future__ import annotations

import inspect
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import sparsevit.bench_attn as bench_attn
from sparsevit.characterize import config, ladder, profiling
from sparsevit.characterize.profiling import Kernel
from sparsevit.errors import SparseVitError

REAL_MEASURE = bench_attn.measure_backend


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace bench-attn's measurement (CUDA only) by a recorder of what it was given."""
    calls: list[dict[str, Any]] = []

    def fake(name: str, source: Any, inputs: tuple, ref: Any, dtype: str, flops: int,
             floor: float, limit_s: float) -> dict[str, Any]:
        assert limit_s == ladder.MEASURE_LIMIT_S
        calls.append({"name": name, "source": source, "shape": tuple(inputs[0].shape),
                      "dtype": inputs[0].dtype, "flops": flops})
        return {"status": "OK", "median_us": 1.0}

    monkeypatch.setattr(bench_attn, "measure_backend", fake)
    monkeypatch.setattr(ladder, "_peaks", lambda device: {"matmul_tflops": 1.0,
                                                          "copy_gbps": 1.0})
    return calls


def test_fake_measurement_has_the_real_signature() -> None:
    """The ladder calls bench-attn's measurement directly: a change of its signature
    must fail here, not on the GPU."""
    assert list(inspect.signature(REAL_MEASURE).parameters) == [
        "name", "source", "inputs", "ref", "dtype", "flops", "floor", "limit_s"]


def cell(cell_id: str) -> dict[str, Any]:
    return config.load("scalability").select([cell_id])[0].settings


def test_ladder_spans_224_to_4096_px_and_vil_stage1(measured: list) -> None:
    exp = config.load("scalability")
    vit = sorted({c.settings["resolution"] for c in exp.cells if c.settings["graph"] == "ViT"})
    assert vit[0] == 224 and vit[-1] == 4096
    vil = {ladder.tokens(c.settings) for c in exp.cells
           if c.settings["graph"] == "VisionLongformer"}
    assert 56 * 56 + 1 in vil  # ViL stage 1 at 224 px: a 56 x 56 grid plus a global token
    methods = {c.settings["method"] for c in exp.cells}
    assert methods == {"naive", "sdpa_math", "sdpa_flash", "sdpa_cudnn", "flex", "sparsevit"}


@pytest.mark.parametrize("cell_id, name, tokens", [
    ("ViT_p16-384-naive", "naive", 24 * 24 + 1),
    ("ViT_p16-512-flex", "flex_b128_original", 32 * 32 + 1),
    ("ViT_p16-224-sdpa_cudnn", "sdpa_cudnn", 14 * 14 + 1),
    ("VisionLongformer_p4-224-sdpa_flash", "sdpa_flash", 56 * 56 + 1),
])
def test_cell_settings_reach_the_measurement(measured: list, cell_id: str, name: str,
                                             tokens: int) -> None:
    settings = cell(cell_id)
    row = ladder.run_ladder_cell({**settings, "batch": 2, "heads": 3, "head_dim": 16,
                                  "dtype": "fp16"}, torch.device("cpu"))
    (call,) = measured
    assert call["name"] == name
    assert call["shape"] == (2, 3, tokens, 16) and call["dtype"] == torch.float16
    assert row["applied"]["qkv_shape"] == [2, 3, tokens, 16]
    assert row["tokens"] == tokens
    graph = call["source"]
    if name == "sdpa_cudnn":  # a dense kernel on the dense graph reads no mask
        assert graph is None
        assert call["flops"] == 4 * tokens * tokens * 16 * 3 * 2
    else:
        assert graph.n_tokens == tokens
        assert call["flops"] == 4 * graph.nnz * 16 * 3 * 2
    if settings["graph"] == "ViT" and graph is not None:
        assert graph.nnz == tokens * tokens


def test_dense_mask_too_large_is_ns_without_building_it(measured: list) -> None:
    row = ladder.run_ladder_cell(cell("ViT_p16-4096-sdpa_math"), torch.device("cpu"))
    assert row["status"] == "NS" and "65537 tokens" in row["reason"]
    assert measured == []


@pytest.mark.parametrize("graph, patch, res", [("ViT", 16, 224), ("VisionLongformer", 4, 224),
                                               ("RegionViT", 16, 240), ("DynamicViT", 16, 256)])
def test_token_count_matches_the_built_graph(graph: str, patch: int, res: int) -> None:
    settings = {"graph": graph, "patch": patch, "resolution": res}
    assert ladder.tokens(settings) == ladder.graph_for(settings).n_tokens


def test_dense_graph_is_all_ones() -> None:
    g = ladder.dense_graph(5)
    assert g.nnz == 25 and np.array_equal(g.adjacency.toarray(), np.ones((5, 5), bool))


def test_unknown_method_is_an_error(measured: list) -> None:
    with pytest.raises(SparseVitError, match="unknown ladder method"):
        ladder.run_ladder_cell({**cell("ViT_p16-224-naive"), "method": "magic"}, "cpu")


# -------------------------------------------------------------------------- profiling


def test_analyze_busy_gaps_and_top_kernels() -> None:
    # Two streams overlap on [10, 15); gaps [20, 30) and [31, 40) between busy spans.
    kernels = [Kernel("gemm", 0, 15), Kernel("softmax", 10, 10), Kernel("gemm", 30, 1),
               Kernel("copy", 40, 10)]
    got = profiling.analyze(kernels)
    assert got["span_us"] == 50 and got["busy_us"] == 31
    assert got["gpu_busy_pct"] == pytest.approx(62.0)
    assert got["gaps_over_10us"] == 0 and got["gap_max_us"] == 10
    assert [k["name"] for k in got["top_kernels"]] == ["gemm", "softmax", "copy"]
    assert got["top_kernels"][0] == {"name": "gemm", "calls": 2, "total_us": 16, "pct": 44.44}
    assert profiling.analyze([]) == {"kernels": 0}


def test_kernels_from_chrome_trace_and_nsys_sqlite(tmp_path: Path) -> None:
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "k1", "ts": 5.0, "dur": 2.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 1.0, "dur": 9.0},
        {"ph": "X", "cat": "Kernel", "name": "k2", "ts": 9.0, "dur": 1.0}]}
    assert profiling.kernels_from_chrome_trace(trace) == [Kernel("k1", 5.0, 2.0),
                                                          Kernel("k2", 9.0, 1.0)]
    db = tmp_path / "r.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE StringIds (id INTEGER, value TEXT)")
        con.execute("CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INT, end INT, shortName INT)")
        con.executemany("INSERT INTO StringIds VALUES (?, ?)", [(1, "gemm"), (2, "softmax")])
        con.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES (?, ?, ?)",
                        [(1000, 3000, 1), (5000, 6000, 2)])
    assert profiling.kernels_from_nsys_sqlite(db) == [Kernel("gemm", 1.0, 2.0),
                                                      Kernel("softmax", 5.0, 1.0)]
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not sqlite")
    with pytest.raises(SparseVitError, match="not an Nsight Systems SQLite export"):
        profiling.kernels_from_nsys_sqlite(bad)


def test_cli_analyze_prints_the_summary(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from sparsevit import cli

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 0, "dur": 4},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 24, "dur": 4}]}))
    assert cli.main(["characterize", "analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gpu_busy_pct" in out and "28.57" in out and "gemm" in out
