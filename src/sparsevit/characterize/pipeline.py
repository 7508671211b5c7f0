"""RQ5's inference pipeline: host batch -> H2D -> (preprocess) -> model -> D2H.

``sync``: one batch at a time on the current stream, the host waits for each result.
``async``: three CUDA streams (copy in, compute, copy out) and a ring of ``queue_depth``
slots, each with its own pinned host and device buffers; batch i uses slot i % depth
and waits only until that slot's previous batch has left the GPU, so up to
``queue_depth`` batches are in flight and copies overlap compute.

Preprocessing (decode is not modelled: frames arrive as raw uint8 pixels at
``raw_scale`` x the model resolution): ``none`` ships model-ready tensors, ``cpu``
converts, resizes and normalises on the host before the copy, ``gpu`` copies the raw
uint8 frame (fewer bytes) and does the same work on the compute stream.

On a CPU device the same code runs with host stand-ins for streams and events (every
operation runs in order, events read the host clock): the schedule, the buffers and
what the model receives are the same, only nothing overlaps. Tests rely on that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

# ImageNet mean/std, as the models' training pipelines normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PipelineSpec:
    mode: str  # sync | async
    queue_depth: int
    batch: int
    resolution: int
    preprocess: str  # none | cpu | gpu
    raw_scale: float
    dtype: torch.dtype
    warmup: int
    iters: int


class _HostEvent:
    """A CUDA event's stand-in on CPU: the host time at record()."""

    def __init__(self) -> None:
        self.t = 0.0

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.t - self.t) * 1e3


class Timeline:
    """Streams and timing events of one device (CUDA, or host stand-ins on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def stream(self) -> Any:
        return torch.cuda.Stream(self.device) if self.cuda else None

    def on(self, stream: Any) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream) if self.cuda and stream is not None else \
            contextlib.nullcontext()

    def event(self) -> Any:
        return torch.cuda.Event(enable_timing=True) if self.cuda else _HostEvent()

    def record(self, event: Any, stream: Any) -> None:
        if self.cuda:
            event.record(stream if stream is not None else torch.cuda.current_stream())
        else:
            event.record()

    def wait(self, stream: Any, event: Any) -> None:
        if self.cuda and stream is not None:
            stream.wait_event(event)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def pin(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if self.cuda else tensor


def preprocess(raw: torch.Tensor, resolution: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, 3, h, w) frames -> normalised (B, 3, res, res) model input."""
    x = raw.float().div_(255.0)
    if x.shape[-2:] != (resolution, resolution):
        x = functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                          align_corners=False)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


@dataclass
class _Slot:
    host_in: torch.Tensor  # pinned: what the H2D copy reads
    dev_in: torch.Tensor
    dev_out: torch.Tensor | None  # the model output, copied so the next call can't clobber it
    host_out: torch.Tensor | None
    events: dict[str, Any]
    busy: bool = False


def run(forward: Callable[[torch.Tensor], torch.Tensor], spec: PipelineSpec,
        device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Push ``spec.warmup`` then ``spec.iters`` batches through the pipeline.

    Returns throughput (images/s), latency p50/p99 (ms: host preprocessing + GPU time
    from the start of the H2D copy to the end of the D2H copy, queueing included),
    median stage times, the overlap efficiency, and ``applied``: what the pipeline
    actually did (streams, slots, in-flight batches, where preprocessing ran).
    """
    tl = Timeline(device)
    asynchronous = spec.mode == "async"
    depth = spec.queue_depth if asynchronous else 1
    streams = {s: tl.stream() for s in ("h2d", "compute", "d2h")} if asynchronous else \
        {"h2d": None, "compute": None, "d2h": None}
    source = _source_batches(spec, seed)
    ships_raw = spec.preprocess == "gpu"
    in_shape = source[0].shape if spec.preprocess != "cpu" else \
        (spec.batch, 3, spec.resolution, spec.resolution)
    in_dtype = source[0].dtype if spec.preprocess != "cpu" else spec.dtype
    slots = [_Slot(tl.pin(torch.empty(in_shape, dtype=in_dtype)),
                   torch.empty(in_shape, dtype=in_dtype, device=device), None, None,
                   {n: tl.event() for n in ("h2d0", "h2d1", "c0", "c1", "d2h0", "d2h1")})
             for _ in range(depth)]
    if spec.preprocess == "none" or ships_raw:
        for slot, batch in zip(slots, source * depth, strict=False):
            slot.host_in.copy_(batch)  # fixed content: the copy, not the fill, is timed

    records: list[dict[str, float]] = []
    in_flight_max = 0

    def finish(slot: _Slot, prep_ms: float, keep: bool) -> None:
        slot.events["d2h1"].synchronize()
        slot.busy = False
        if keep:
            ev = slot.events
            records.append({
                "prep_ms": prep_ms, "h2d_ms": ev["h2d0"].elapsed_time(ev["h2d1"]),
                "compute_ms": ev["c0"].elapsed_time(ev["c1"]),
                "d2h_ms": ev["d2h0"].elapsed_time(ev["d2h1"]),
                "gpu_ms": ev["h2d0"].elapsed_time(ev["d2h1"]),
            })

    pending: list[tuple[_Slot, float, bool]] = [(s, 0.0, False) for s in slots]
    total = spec.warmup + spec.iters
    t_start = 0.0
    for i in range(total):
        if i == spec.warmup:
            tl.synchronize()
            t_start = time.perf_counter()
        slot, prev_prep, prev_keep = pending[i % depth]
        if slot.busy:  # the slot's previous batch must leave before its buffers are reused
            finish(slot, prev_prep, prev_keep)
        in_flight_max = max(in_flight_max, sum(1 for s in slots if s.busy and
                                               not s.events["d2h1"].query()) + 1)
        prep_ms = 0.0
        if spec.preprocess == "cpu":
            t0 = time.perf_counter()
            slot.host_in.copy_(preprocess(source[i % len(source)], spec.resolution, spec.dtype))
            prep_ms = (time.perf_counter() - t0) * 1e3
        _submit(tl, streams, slot, forward, spec, ships_raw)
        slot.busy = True
        pending[i % depth] = (slot, prep_ms, i >= spec.warmup)
        if not asynchronous:
            finish(slot, prep_ms, i >= spec.warmup)
    for slot, prep_ms, keep in pending:
        if slot.busy:
            finish(slot, prep_ms, keep)
    tl.synchronize()
    wall_ms = (time.perf_counter() - t_start) * 1e3
    return _summary(records, wall_ms, spec, {
        "pipeline": spec.mode, "streams": 3 if asynchronous else 1, "slots": depth,
        "max_in_flight": in_flight_max, "preprocess": spec.preprocess,
        "h2d_shape": list(in_shape), "h2d_dtype": str(in_dtype).replace("torch.", ""),
        "device": str(device),
    })


def _source_batches(spec: PipelineSpec, seed: int) -> list[torch.Tensor]:
    """Two distinct host batches, reused in turn (content does not change the timing)."""
    gen = torch.Generator().manual_seed(seed)
    if spec.preprocess == "none":
        shape = (spec.batch, 3, spec.resolution, spec.resolution)
        return [torch.randn(shape, generator=gen).to(spec.dtype) for _ in range(2)]
    side = round(spec.resolution * spec.raw_scale)
    shape = (spec.batch, 3, side, side)
    return [torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8) for _ in range(2)]


def _submit(tl: Timeline, streams: dict[str, Any], slot: _Slot,
            forward: Callable[[torch.Tensor], torch.Tensor], spec: PipelineSpec,
            ships_raw: bool) -> None:
    ev = slot.events
    with tl.on(streams["h2d"]):
        tl.record(ev["h2d0"], streams["h2d"])
        slot.dev_in.copy_(slot.host_in, non_blocking=tl.cuda)
        tl.record(ev["h2d1"], streams["h2d"])
    tl.wait(streams["compute"], ev["h2d1"])
    with tl.on(streams["compute"]):
        tl.record(ev["c0"], streams["compute"])
        x = preprocess(slot.dev_in, spec.resolution, spec.dtype) if ships_raw else slot.dev_in
        y = forward(x)
        if slot.dev_out is None:
            slot.dev_out = torch.empty_like(y)
            slot.host_out = tl.pin(torch.empty(y.shape, dtype=y.dtype))
        slot.dev_out.copy_(y)
        tl.record(ev["c1"], streams["compute"])
    tl.wait(streams["d2h"], ev["c1"])
    with tl.on(streams["d2h"]):
        tl.record(ev["d2h0"], streams["d2h"])
        slot.host_out.copy_(slot.dev_out, non_blocking=tl.cuda)
        tl.record(ev["d2h1"], streams["d2h"])


def _summary(records: list[dict[str, float]], wall_ms: float, spec: PipelineSpec,
             applied: dict[str, Any]) -> dict[str, Any]:
    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in records])

    latency = col("prep_ms") + col("gpu_ms")
    stages = {n: float(col(n).sum()) for n in ("prep_ms", "h2d_ms", "compute_ms", "d2h_ms")}
    serial = sum(stages.values())
    bottleneck = max(stages.values())
    # 0: the stages ran one after another; 1: the wall time shrank to the slowest stage.
    overlap = (serial - wall_ms) / (serial - bottleneck) if serial > bottleneck else 0.0
    return {
        "throughput_img_s": spec.iters * spec.batch / (wall_ms * 1e-3),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p99_ms": float(np.percentile(latency, 99)),
        "latency_mean_ms": float(latency.mean()),
        **{f"{n.removesuffix('_ms')}_p50_ms": float(np.median(col(n))) for n in stages},
        "wall_ms": wall_ms, "serial_ms": serial, "overlap_efficiency": overlap,
        "batches": len(records), "applied": applied,
    }
