"""Where GPU time goes: kernel intervals from torch.profiler (always) or Nsight Systems
(when ``nsys`` is on the PATH), and one analysis of them.

The analysis reports GPU busy % (the union of kernel intervals over the profiled span),
the gaps between consecutive kernels (idle time the GPU spent waiting for the host or
for a dependency) and the kernels that took the most time.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsevit.errors import SparseVitError

GAP_THRESHOLD_US = 10.0  # the seed's analysis counted gaps above 10 us
TOP_KERNELS = 5


@dataclass(frozen=True)
class Kernel:
    name: str
    start_us: float
    dur_us: float


def analyze(kernels: Iterable[Kernel], top: int = TOP_KERNELS) -> dict[str, Any]:
    """GPU busy %, kernel-gap statistics and the ``top`` kernels by total time."""
    ks = sorted(kernels, key=lambda k: k.start_us)
    if not ks:
        return {"kernels": 0}
    starts = np.array([k.start_us for k in ks])
    ends = starts + np.array([k.dur_us for k in ks])
    span = float(ends.max() - starts.min())
    # Union of intervals (kernels of several streams may overlap): a running maximum of
    # the ends; a gap is where the next start lies beyond everything that ran before.
    reach = np.maximum.accumulate(ends)
    gaps = np.maximum(starts[1:] - reach[:-1], 0.0)
    busy = span - float(gaps.sum())
    totals: dict[str, list[float]] = {}
    for k in ks:
        totals.setdefault(k.name, []).append(k.dur_us)
    ranked = sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:top]
    kernel_sum = float(sum(k.dur_us for k in ks))
    return {
        "kernels": len(ks), "span_us": span, "busy_us": busy,
        "gpu_busy_pct": 100.0 * busy / span if span > 0 else 100.0,
        "gap_median_us": float(np.median(gaps)) if gaps.size else 0.0,
        "gap_p99_us": float(np.percentile(gaps, 99)) if gaps.size else 0.0,
        "gap_max_us": float(gaps.max()) if gaps.size else 0.0,
        f"gaps_over_{GAP_THRESHOLD_US:g}us": int((gaps > GAP_THRESHOLD_US).sum()),
        "top_kernels": [{"name": name[:120], "calls": len(d), "total_us": round(sum(d), 2),
                         "pct": round(100.0 * sum(d) / kernel_sum, 2)}
                        for name, d in ranked],
    }


def kernels_from_chrome_trace(trace: dict[str, Any]) -> list[Kernel]:
    """GPU kernels of a torch.profiler chrome trace (``cat == 'kernel'`` complete events)."""
    return [Kernel(str(e.get("name", "?")), float(e["ts"]), float(e.get("dur", 0.0)))
            for e in trace.get("traceEvents", [])
            if e.get("ph") == "X" and str(e.get("cat", "")).lower() == "kernel"]


def kernels_from_nsys_sqlite(path: str | Path) -> list[Kernel]:
    """GPU kernels of an ``nsys export --type sqlite`` database (ns -> us)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT s.value, k.start, k.end FROM CUPTI_ACTIVITY_KIND_KERNEL AS k "
                "JOIN StringIds AS s ON s.id = k.shortName").fetchall()
    except sqlite3.Error as e:
        raise SparseVitError(f"{path}: not an Nsight Systems SQLite export ({e})") from None
    return [Kernel(name, start / 1e3, (end - start) / 1e3) for name, start, end in rows]


def profile(step: Callable[[], Any], steps: int, sync: Callable[[], None],
            trace_path: Path | None = None) -> dict[str, Any]:
    """Run ``step`` ``steps`` times under torch.profiler (CPU + CUDA activity) and
    analyse its GPU kernels; the chrome trace is kept at ``trace_path`` when given."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    with tempfile.TemporaryDirectory() as tmp:
        path = trace_path or Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(Path(path).read_text())
    result = analyze(kernels_from_chrome_trace(trace))
    result["profiler"] = "torch.profiler"
    result["profiled_steps"] = steps
    return result


def nsys_path() -> str | None:
    return shutil.which("nsys")


def nsys_command(report: Path) -> list[str]:
    """The prefix that runs a command under Nsight Systems and exports SQLite next to it."""
    exe = nsys_path()
    if exe is None:
        raise SparseVitError("nsys is not on the PATH")
    return [exe, "profile", "--trace=cuda,nvtx", "--force-overwrite=true",
            "--export=sqlite", "-o", str(report)]
