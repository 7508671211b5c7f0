"""sparsevit characterize: configs, and proof that every configured setting reaches the
benchmark (an instrumented model on the CPU records what it was built with and fed)."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from sparsevit import cli
from sparsevit.characterize import bench, config, numa, runner
from sparsevit.errors import SparseVitError

BASE = {
    "model": "vit", "patch": 8, "depth": 1, "dim": 64, "resolution": 32, "attn": "dense",
    "batch": 2, "dtype": "fp32", "compile": "eager", "pipeline": "sync", "queue_depth": 1,
    "preprocess": "none", "raw_scale": 1.0, "numa": "none", "warmup": 1, "iters": 3,
    "profile": False, "profile_iters": 1, "nsys": False, "seed": 0,
}


def write_config(tmp_path: Path, sweep: dict[str, Any], name: str = "t",
                 **defaults: Any) -> Path:
    def toml(d: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())

    path = tmp_path / f"{name}.toml"
    path.write_text(f'figure = "{name}"\nkind = "model"\n[defaults]\n'
                    f"{toml({**BASE, **defaults})}\n[[sweep]]\n{toml(sweep)}\n")
    return path


class Recorder(torch.nn.Module):
    """Stands in for a ViT: remembers its build settings and every input it gets."""

    built: ClassVar[list[dict[str, Any]]] = []
    inputs: ClassVar[list[tuple[tuple[int, ...], torch.dtype, str]]] = []

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__()
        Recorder.built.append(dict(settings))
        self.img_size = (settings["resolution"], settings["resolution"])
        self.proj = torch.nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Recorder.inputs.append((tuple(x.shape), x.dtype, x.device.type))
        return self.proj(x.mean(dim=(2, 3)))


@pytest.fixture
def recorder() -> type[Recorder]:
    Recorder.built, Recorder.inputs = [], []
    return Recorder


def run(tmp_path: Path, cfg: Path, overrides: list[str] | None = None,
        factory: Any = Recorder, cells: list[str] | None = None,
        redo: tuple[str, ...] = ()) -> tuple[runner.RunContext, dict[str, dict[str, Any]]]:
    exp = config.load(cfg, overrides)
    ctx = runner.make_context(exp, tmp_path / "logs", overrides or [], model_factory=factory)
    runner.run_cells(ctx, exp.select(cells), redo, progress=False)
    rows = {}
    for cell in exp.cells:
        settings, found = runner.read_log(runner.log_path(ctx, cell))
        assert settings == cell.settings
        rows[cell.cell_id] = found[0]
    return ctx, rows


# ----------------------------------------------------------------------------- configs


def test_shipped_configs_expand_to_unique_valid_cells() -> None:
    counts = {name: len(config.load(name).cells) for name in config.available()}
    assert counts["rq1"] == 3 * 4 * 4
    assert set(counts) >= {"rq1", "rq2", "rq3", "rq4", "rq5", "scalability"}
    rq1 = config.load("rq1")
    assert "vit8x24x1280-224-base" in {c.cell_id for c in rq1.cells}
    rq3 = {c.system for c in config.load("rq3").cells}
    assert rq3 == {"eager", "default", "reduce-overhead", "max-autotune"}


def test_override_sweeps_and_renames(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"resolution": [16, 32]})
    exp = config.load(cfg, ["batch=[1,4]", "pipeline=async"])
    assert sorted(c.cell_id for c in exp.cells) == [
        "vit8x1x64-16-b1", "vit8x1x64-16-b4", "vit8x1x64-32-b1", "vit8x1x64-32-b4"]
    assert {c.settings["pipeline"] for c in exp.cells} == {"async"}


@pytest.mark.parametrize("override, message", [
    ("bach=4", "unknown setting(s) bach"),
    ("compile=fast", "bad compile = 'fast' (one of eager, default"),
    ("batch=0", "bad batch = 0"),
    ("batch=[]", "sweeps an empty list"),
    ("batch", "--set must look like name=value"),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    cfg = write_config(tmp_path, {"resolution": [16]})
    with pytest.raises(SparseVitError, match=re.escape(message)):
        config.load(cfg, [override])


def test_cli_cells_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["characterize", "cells", "rq1"]) == 0
    assert len(capsys.readouterr().out.split()) == 48
    assert cli.main(["characterize", "cells", "rq9"]) == 2
    assert "unknown experiment 'rq9'" in capsys.readouterr().err
    assert cli.main(["characterize", "run", "rq1", "--cell", "nope", "--out", "/dev/null"]) == 2
    assert "unknown cell(s) nope" in capsys.readouterr().err


# ------------------------------------------------- settings really reach the benchmark


def test_resolution_and_batch_reach_the_model(tmp_path: Path, recorder: type[Recorder]) -> None:
    cfg = write_config(tmp_path, {"resolution": [16, 24], "batch": [1, 3]})
    _, rows = run(tmp_path, cfg)
    built = {(s["resolution"], s["batch"]) for s in recorder.built}
    assert built == {(16, 1), (16, 3), (24, 1), (24, 3)}
    seen = {shape for shape, _, _ in recorder.inputs}
    assert seen == {(b, 3, r, r) for r in (16, 24) for b in (1, 3)}
    row = rows["vit8x1x64-24-b3"]
    assert row["status"] == "OK"
    assert row["applied"]["model_input_shape"] == [3, 3, 24, 24]
    assert (row["applied"]["resolution"], row["applied"]["batch"]) == (24, 3)
    assert row["applied"]["model_img_size"] == [24, 24]


def test_pipeline_mode_and_queue_depth_reach_the_pipeline(
        tmp_path: Path, recorder: type[Recorder]) -> None:
    cfg = write_config(tmp_path, {"pipeline": ["sync", "async"], "queue_depth": [2, 5]},
                       iters=7)
    _, rows = run(tmp_path, cfg)
    for (mode, depth), streams, slots in ((("sync", 2), 1, 1), (("async", 2), 3, 2),
                                          (("async", 5), 3, 5)):
        applied = rows[f"vit8x1x64-32-{mode}_q{depth}"]["applied"]
        assert (applied["pipeline"], applied["streams"], applied["slots"]) == \
            (mode, streams, slots)
        assert rows[f"vit8x1x64-32-{mode}_q{depth}"]["batches"] == 7
    # Each cell: the build call and a timed eager call, then warmup + iters batches.
    assert len(recorder.inputs) == 4 * (2 + 1 + 7)
    row = rows["vit8x1x64-32-async_q5"]
    for key in ("throughput_img_s", "latency_p50_ms", "latency_p99_ms", "overlap_efficiency"):
        assert isinstance(row[key], float)


def test_preprocessing_place_reaches_the_pipeline(tmp_path: Path,
                                                  recorder: type[Recorder]) -> None:
    cfg = write_config(tmp_path, {"preprocess": ["none", "cpu", "gpu"]}, raw_scale=1.5,
                       dtype="fp16")
    _, rows = run(tmp_path, cfg)
    copied = {p: (rows[f"vit8x1x64-32-pre{p}"]["applied"]["h2d_shape"],
                  rows[f"vit8x1x64-32-pre{p}"]["applied"]["h2d_dtype"]) for p in
              ("none", "cpu", "gpu")}
    # cpu/none ship model-ready fp16 images; gpu ships the raw 1.5x uint8 frame.
    assert copied == {"none": ([2, 3, 32, 32], "float16"), "cpu": ([2, 3, 32, 32], "float16"),
                      "gpu": ([2, 3, 48, 48], "uint8")}
    assert {(s, d) for s, d, _ in recorder.inputs} == {((2, 3, 32, 32), torch.float16)}
    assert rows["vit8x1x64-32-precpu"]["prep_p50_ms"] > 0
    assert rows["vit8x1x64-32-pregpu"]["prep_p50_ms"] == 0


def test_compile_mode_reaches_torch_compile(tmp_path: Path, recorder: type[Recorder],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str] = []

    def fake_compile(model: torch.nn.Module, mode: str) -> torch.nn.Module:
        modes.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    cfg = write_config(tmp_path, {"compile": list(config.COMPILE_MODES)})
    _, rows = run(tmp_path, cfg)
    assert modes == ["default", "reduce-overhead", "max-autotune"]
    for mode in config.COMPILE_MODES:
        row = rows[f"vit8x1x64-32-{mode}"]
        assert row["applied"]["compile"] == mode
        assert row["applied"]["compiled"] is (mode != "eager")
        assert ("compile_s" in row) is (mode != "eager")


def test_resume_skips_finished_cells_and_reruns_changed_ones(
        tmp_path: Path, recorder: type[Recorder]) -> None:
    cfg = write_config(tmp_path, {"batch": [1, 2]})
    run(tmp_path, cfg)
    assert len(recorder.built) == 2
    run(tmp_path, cfg)
    assert len(recorder.built) == 2  # both logs finished: nothing ran
    run(tmp_path, cfg, ["iters=2"])  # same names, other settings: both rerun
    assert len(recorder.built) == 4


def test_a_failing_cell_is_logged_and_the_sweep_goes_on(tmp_path: Path) -> None:
    def factory(settings: dict[str, Any]) -> torch.nn.Module:
        if settings["batch"] == 1:
            raise SparseVitError("this model refuses batch 1")
        return Recorder(settings)

    cfg = write_config(tmp_path, {"batch": [1, 2]})
    _, rows = run(tmp_path, cfg, factory=factory)
    assert rows["vit8x1x64-32-b1"] == {"status": "NS", "reason": "this model refuses batch 1",
                                       "cell_s": rows["vit8x1x64-32-b1"]["cell_s"]}
    assert rows["vit8x1x64-32-b2"]["status"] == "OK"


# ------------------------------------------------------------------------------- NUMA


def test_numa_on_one_node_is_ns_with_the_reason(tmp_path: Path, recorder: type[Recorder],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    one = numa.Topology((0,), "/usr/bin/numactl", 0)
    monkeypatch.setattr(numa, "topology", lambda **_: one)
    cfg = write_config(tmp_path, {"numa": ["none", "local", "remote"]})
    _, rows = run(tmp_path, cfg)
    assert rows["vit8x1x64-32-numalocal"]["status"] == "NS"
    assert "1 NUMA node(s)" in rows["vit8x1x64-32-numaremote"]["reason"]
    assert rows["vit8x1x64-32-numanone"]["applied"]["numa"] == "none"
    assert len(recorder.built) == 1
    no_tool = numa.Topology((0, 1), None, 0)
    assert numa.unsupported("remote", no_tool) == "numactl is not installed on this machine"


def test_numa_binding_runs_the_cell_under_numactl(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake numactl (two nodes) records its arguments and runs the real child cell."""
    calls = tmp_path / "numactl_calls"
    fake = tmp_path / "bin" / "numactl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nshift 2\nexec "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    two = numa.Topology((0, 1), str(fake), 0)
    monkeypatch.setattr(numa, "topology", lambda **_: two)
    src = str(Path(runner.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = write_config(tmp_path, {"numa": ["remote"]}, iters=1, warmup=0)
    _, rows = run(tmp_path, cfg)
    args = calls.read_text().split()
    assert args[:2] == ["--cpunodebind=1", "--membind=1"]
    assert args[2] == sys.executable and "--cell" in args
    row = rows["vit8x1x64-32-base"]
    assert row["status"] == "OK", row
    assert row["applied"]["numa"] == "remote"
    assert "--membind=1" in row["applied"]["launched_with"]
    assert row["applied"]["cpus_allowed"]
    assert row["applied"]["model_input_shape"] == [2, 3, 32, 32]


def test_applied_binding_reads_the_kernel_view(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nMems_allowed_list:\t1\n")
    got = numa.applied_binding(str(status))
    assert got["mems_allowed"] == "1"
    assert numa.parse_range_list(got["cpus_allowed"]) == sorted(os.sched_getaffinity(0))
    assert numa.parse_range_list("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert numa.range_list([8, 0, 1, 2, 5, 7]) == "0-2,5,7-8"


def test_topology_reads_sysfs(tmp_path: Path) -> None:
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    (tmp_path / "online").write_text("0-1\n")
    (tmp_path / "node1" / "cpulist").write_text("8-15\n")
    topo = numa.topology(tmp_path)
    assert topo.nodes == (0, 1) and topo.cpus == {1: "8-15"}
    assert numa.target_node("local", topo) == 0 and numa.target_node("remote", topo) == 1


# ------------------------------------------------------------------------ time limit


def test_time_limit_logs_tle_and_goes_on(tmp_path: Path) -> None:
    """Worker processes run the real tiny ViT; the slow cell overruns and is killed."""
    src = str(Path(runner.__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")
    cfg = write_config(tmp_path, {"iters": [2, 1000000]})
    exp = config.load(cfg)
    ctx = runner.make_context(exp, tmp_path / "logs", [])
    assert runner.supervise(ctx, list(exp.cells), time_limit_s=8.0) == 1
    status = {c.system: runner.read_log(runner.log_path(ctx, c))[1][0]["status"]
              for c in exp.cells}
    assert status == {"n2": "OK", "n1000000": "TLE"}


def test_bench_rejects_a_dim_that_is_not_whole_heads() -> None:
    with pytest.raises(SparseVitError, match="multiple of the head dim"):
        bench.build_model({**BASE, "dim": 100})
