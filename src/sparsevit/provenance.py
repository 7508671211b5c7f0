"""Where a number came from: device, driver, software versions, command and date."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

_PACKAGES = ("sparsevit", "numpy", "scipy", "torch", "triton", "flash-attn", "highspy", "gurobipy")
# Where the kit's runner placed this run (sparsevit.kit.cellrun sets the first two).
PLACEMENT_ENV = {"executor": "SPARSEVIT_EXECUTOR", "worker": "SPARSEVIT_WORKER",
              "cuda_visible_devices": "CUDA_VISIBLE_DEVICES", "slurm_job_id": "SLURM_JOB_ID"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _gpu() -> dict[str, str]:
    """GPU name and driver from nvidia-smi; empty when there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    name, driver = (s.strip() for s in out[0].split(",", 1))
    return {"gpu": name, "gpu_count": str(len(out)), "driver": driver}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(command: list[str] | None = None) -> dict[str, Any]:
    """One flat dict of provenance; ``device`` is the GPU name, or ``cpu`` without one."""
    gpu = _gpu()
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(command if command is not None else sys.argv),
        "host": platform.node(),
        "device": gpu.get("gpu", "cpu"),
        **gpu,
        "cpu": _cpu(),
        "python": platform.python_version(),
    }
    info.update({p: _version(p) for p in _PACKAGES})
    info.update({k: os.environ[v] for k, v in PLACEMENT_ENV.items() if v in os.environ})
    return info


def device_tag(info: dict[str, Any]) -> str:
    """Short device name for file names: 'h100', 'h200', 'a100', ... or 'cpu'."""
    name = str(info.get("device", "cpu")).lower()
    for tag in ("h200", "h100", "a100", "l40s", "4090", "b200", "gh200"):
        if tag in name:
            return tag
    return "cpu" if name == "cpu" else "".join(c for c in name.split()[-1] if c.isalnum())
