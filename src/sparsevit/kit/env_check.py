"""``make env-check``: can this machine run the full GPU run? One table: GPU, driver,
CUDA, torch, triton, flash-attn, Gurobi (and its licence), HiGHS, submitit.

Exit status 1 when something the GPU run needs (a GPU, torch with CUDA, triton) is
missing; optional pieces (flash-attn, Gurobi, submitit) only warn.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tabulate import tabulate

# Oldest Linux driver each CUDA major version runs on (CUDA's minor-version compatibility).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
GUROBI_TRIAL_VARS = 2000  # the pip package's bundled licence stops above this


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


def gpus() -> list[dict[str, str]]:
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(fields, (s.strip() for s in line.split(",")), strict=False))
            for line in out.splitlines() if line.strip()]


Row = list[str]


def row_gpu(found: list[dict[str, str]]) -> list[Row]:
    if not found:
        return [["GPU", "-", "MISSING", "nvidia-smi lists no GPU: the GPU figures cannot run"],
                ["driver", "-", "MISSING", ""]]
    names = sorted({f"{g['name']} (sm_{g.get('compute_cap', '?').replace('.', '')}, "
                    f"{g.get('memory.total', '?')})" for g in found})
    return [["GPU", f"{len(found)} x " + "; ".join(names), "ok", ""],
            ["driver", found[0]["driver_version"], "ok", ""]]


def rows_torch(driver: str | None) -> list[Row]:
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # ImportError, or a broken install's OSError
        return [["torch", "-", "MISSING", f"{type(e).__name__}: {e}"[:120]],
                ["CUDA (torch)", "-", "MISSING", ""]]
    cuda = torch.version.cuda or "-"
    avail = torch.cuda.is_available()
    rows = [["torch", torch.__version__, "ok" if avail else "ERROR",
             f"sees {torch.cuda.device_count()} GPU(s)" if avail else "torch.cuda.is_available() "
             "is False (CPU build, or the driver is too old)"]]
    note, status = "", "ok"
    if cuda != "-" and driver:
        need = MIN_DRIVER.get(_major(cuda))
        if need and _major(driver) < need:
            status, note = "ERROR", f"driver {driver} is too old for CUDA {cuda} (needs >= {need})"
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
        m = re.search(r"release ([\d.]+)", out.stdout)
        note = (note + "; " if note else "") + f"nvcc {m.group(1) if m else '?'}"
    rows.append(["CUDA (torch)", cuda, status if cuda != "-" else "ERROR", note])
    return rows


def row_triton() -> Row:
    v = _version("triton") or _version("pytorch-triton")
    note = "" if v else "the sparsevit kernel needs it"
    return ["triton", v or "-", "ok" if v else "MISSING", note]


def row_flash_attn() -> Row:
    v = _version("flash-attn") or _version("flash_attn")
    if v is None:
        return ["flash-attn", "-", "absent", "optional baseline: logged NS without it"]
    try:
        importlib.import_module("flash_attn_2_cuda")
    except Exception as e:
        return ["flash-attn", v, "ERROR", f"extension fails to load ({str(e)[:80]}): ABI "
                "mismatch with this torch; rebuild from source (README, Troubleshooting)"]
    return ["flash-attn", v, "ok", ""]


def gurobi_licence(gp: Any) -> tuple[str, str]:
    """(status, note) from a real solve just past the trial limit: an empty-model probe
    passes under the size-limited pip licence and fails only at optimize()."""
    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
        model = gp.Model(env=env)
        x = model.addVars(GUROBI_TRIAL_VARS + 1, ub=1.0)
        model.setObjective(x.sum())
        model.optimize()
        model.dispose()
        env.dispose()
    except gp.GurobiError as e:
        if e.errno == gp.GRB.Error.SIZE_LIMIT_EXCEEDED:
            return "warn", "size-limited trial licence: large schedules fall back to HiGHS"
        if e.errno == gp.GRB.Error.NO_LICENSE:
            return "warn", "no valid licence (missing or expired): HiGHS is used"
        return "warn", f"Gurobi error {e.errno}: {str(e)[:80]}; HiGHS is used"
    return "ok", "full licence"


def row_gurobi() -> Row:
    try:
        gp = importlib.import_module("gurobipy")
    except ImportError:
        return ["Gurobi", "-", "absent", "optional: HiGHS solves the schedules"]
    status, note = gurobi_licence(gp)
    return ["Gurobi", _version("gurobipy") or "?", status, note]


def row_highs() -> Row:
    v = _version("highspy")
    scipy = _version("scipy")
    note = f"scipy {scipy} (scipy.optimize.milp)" if scipy else ""
    if v:
        return ["HiGHS", f"highspy {v}", "ok", note]
    return ["HiGHS", "-", "warn" if scipy else "MISSING", note or "no ILP solver"]


def row_optional(name: str, package: str, why: str) -> Row:
    v = _version(package)
    return [name, v or "-", "ok" if v else "absent", "" if v else why]


def collect() -> list[Row]:
    found = gpus()
    rows = [["python", platform.python_version(), "ok", sys.executable],
            ["sparsevit", _version("sparsevit") or "(source tree)", "ok", ""]]
    rows += row_gpu(found)
    rows += rows_torch(found[0]["driver_version"] if found else None)
    checks: Sequence[Callable[[], Row]] = (row_triton, row_flash_attn, row_gurobi, row_highs)
    rows += [check() for check in checks]
    rows.append(row_optional("submitit", "submitit", "only for --executor slurm"))
    return rows


REQUIRED = {"GPU", "torch", "CUDA (torch)", "triton"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsevit env-check", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    return run(argparse.Namespace())


def run(args: argparse.Namespace) -> int:
    rows = collect()
    print(tabulate(rows, headers=["component", "version", "status", "note"]))
    bad = [r[0] for r in rows if r[0] in REQUIRED and r[2] in ("MISSING", "ERROR")]
    if bad:
        print(f"\nnot ready for the GPU run: {', '.join(bad)} (see README, Troubleshooting)")
        return 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("env-check", help="GPU, driver, CUDA, torch, triton, "
                              "flash-attn, Gurobi/HiGHS in one table")
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
