"""T3: profile the block-sparse kernel on this GPU; the cost model T4 schedules with.

For every candidate config (tile shape from ``planner.TILE_CANDIDATES`` x warps/stages
from ``planner.LAUNCH_CANDIDATES``) and a few occupancies r (persistent programs per SM,
up to what the compiled kernel's registers and shared memory allow), the kernel runs
synthetic graphs whose work units hold k full, column or partial tiles, m units per
program, P = n_SM * r programs. A least-squares fit of

    time = launch_us + m * (unit_us + k * tile_us[kind])

gives the per-unit and per-tile costs the scheduler uses. Also measured: merging split
rows, dense SDPA (flash, cuDNN), and the path a plan's dense rectangles take
(``sv.attention`` on all-dense graphs: gathers, side stream, vendor kernel), which the
scheduler prices dense rectangles with.

The profile is JSON, keyed by GPU name and software versions and cached under
``$SPARSEVIT_CACHE`` (default ``~/.cache/sparsevit``)/profiles/; later plans reuse it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from sparsevit import atomic
from sparsevit.errors import SparseVitError

# 2: the combine pass costs a launch, a per-wave and a per-chunk term; 3: timed as CUDA
# graph replays (device time, without the host's launch path)
VERSION = 3
DTYPES = ("bf16", "fp16")
KINDS = ("full", "column", "partial")
# (units per program, tiles per unit): two of each, enough for the 5-parameter fit.
DESIGN = ((1, 2), (1, 8), (3, 2), (3, 8))
MIN_QUERY_BLOCKS = 16  # query blocks of a synthetic graph; units grow through batch*heads
DENSE_TOKENS = (4096, 16384)
VENDOR_PATH_TOKENS = (1024, 2048, 4096, 8192)
REG_ALLOC_UNIT = 256  # registers are allocated to a warp in units of this many
OUTLIER_TOLERANCE = 0.08  # a point this far off the first fit is timed again (min kept)
MIN_POINTS = 8  # of the 12 a fit keeps (5 costs are fitted)
MAX_FIT_RMS = 0.1  # a fit that misses its own points by more is not used by the scheduler


# ------------------------------------------------------------------ load, save, cache


def cache_dir() -> Path:
    root = os.environ.get("SPARSEVIT_CACHE") or Path.home() / ".cache" / "sparsevit"
    return Path(root) / "profiles"


def cache_key(gpu: str, software: dict[str, str], dtype: str, head_dim: int) -> str:
    """File name of a profile: GPU, dtype, head dim, triton and torch versions, and the
    profile format's version (a new format is measured anew, not read from an old file)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    return (f"{slug}.v{VERSION}.{dtype}.d{head_dim}.triton-{software.get('triton', '?')}"
            f".torch-{software.get('torch', '?')}.json").replace("+", "_")


def software() -> dict[str, str]:
    from sparsevit import provenance

    info = provenance.collect([])
    out = {k: str(info[k]) for k in ("sparsevit", "torch", "triton")}
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
    except ImportError:
        out["cuda"] = "absent"
    return out


def current_gpu() -> str | None:
    """Name of the current CUDA GPU, or None without one (torch imported only here)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name()


def load(source: str | os.PathLike | dict | None = None, dtype: str = "bf16",
         head_dim: int = 64) -> dict[str, Any]:
    """A validated profile: from a path, a dict, or (None) the cache of this GPU."""
    if isinstance(source, dict):
        return validate(source, "profile")
    if source is None:
        gpu = current_gpu()
        if gpu is None:
            raise SparseVitError("no CUDA GPU is visible, so there is no cached profile to "
                                 "use: pass a profile JSON (sparsevit profile on a GPU writes one)")
        path = cache_dir() / cache_key(gpu, software(), dtype, head_dim)
        if not path.is_file():
            raise SparseVitError(f"no profile of {gpu} for {dtype}, head_dim {head_dim} in "
                                 f"{path.parent}: run `sparsevit profile --dtype {dtype} "
                                 f"--head-dim {head_dim}` first")
        source = path
    path = Path(source)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SparseVitError(f"{path}: no such profile") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SparseVitError(f"{path}: unreadable profile ({type(e).__name__})") from None
    return validate(doc, str(path))


def validate(doc: Any, where: str) -> dict[str, Any]:
    """Check the fields the scheduler reads; one clear error for the first problem."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise SparseVitError(f"{where}: not a sparsevit profile ({what})")

    need(isinstance(doc, dict) and doc.get("version") == VERSION, f"version must be {VERSION}")
    for key, kind in (("gpu", str), ("sm_count", int), ("dtype", str), ("head_dim", int),
                      ("software", dict), ("configs", list), ("combine", list)):
        need(isinstance(doc.get(key), kind), f"{key} must be a {kind.__name__}")
    need(doc["dtype"] in DTYPES, f"dtype must be one of {DTYPES}")
    need(len(doc["configs"]) > 0, "no configs")
    for c in doc["configs"]:
        need(all(isinstance(c.get(k), int) for k in
                 ("bm", "bn", "num_warps", "num_stages", "max_programs_per_sm")),
             "config without bm, bn, num_warps, num_stages, max_programs_per_sm")
        need(isinstance(c.get("fits"), list) and c["fits"], "config without fits")
        for f in c["fits"]:
            need(all(isinstance(f.get(k), (int, float)) for k in
                     ("programs_per_sm", "launch_us", "unit_us", *(f"{k}_us" for k in KINDS))),
                 "fit without programs_per_sm, launch_us, unit_us, full/column/partial_us")
    return doc


def save(profile: dict[str, Any], path: str | os.PathLike) -> Path:
    atomic.write_text(path, json.dumps(profile, indent=1, sort_keys=True))
    return Path(path)


# ------------------------------------------------------------------------- cost model


def costs(profile: dict[str, Any]) -> list[Any]:
    """One ``schedule.model.Costs`` per (config, profiled occupancy) whose fit is usable."""
    from sparsevit.schedule.model import Costs

    combine = {c["bm"]: c for c in profile["combine"]}
    out = []
    for c in profile["configs"]:
        comb = combine.get(c["bm"], {"launch_us": 0.0, "wave_us": 0.0, "chunk_us": 0.0})
        for f in c["fits"]:
            if not f.get("usable", True):
                continue
            out.append(Costs(c["bm"], c["bn"], c["num_warps"], c["num_stages"],
                             int(f["programs_per_sm"]), max(f["launch_us"], 0.0),
                             max(f["unit_us"], 0.0), *(max(f[f"{k}_us"], 0.0) for k in KINDS),
                             *(max(comb[f"{k}_us"], 0.0) for k in ("launch", "wave", "chunk"))))
    return out


def fit_costs(points: list[tuple[int, str, int, float]]) -> dict[str, float]:
    """Least squares of time = launch + m * unit + m * k * tile[kind] over (m, kind, k, us).

    A disturbed timing (something else on the GPU, a clock change) only comes out slow:
    while a point lies more than OUTLIER_TOLERANCE above the fit, the slowest one is left
    out and the fit redone, keeping at least MIN_POINTS. ``usable`` is False when the fit
    still misses its points by more than MAX_FIT_RMS or has a negative cost.
    """
    X = _design(points)
    y = np.array([us for *_, us in points])
    keep = np.ones(y.shape[0], bool)
    while True:
        coef, *_ = np.linalg.lstsq(X[keep], y[keep], rcond=None)
        above = np.where(keep, _residuals(points, coef), 0.0)
        if above.max() <= OUTLIER_TOLERANCE or keep.sum() <= MIN_POINTS:
            break
        keep[np.argmax(above)] = False
    rms = float(np.sqrt(np.mean(_residuals(points, coef)[keep] ** 2)))
    return {"launch_us": float(coef[0]), "unit_us": float(coef[1]),
            **{f"{k}_us": float(v) for k, v in zip(KINDS, coef[2:], strict=True)},
            "rel_rms": rms, "left_out": int((~keep).sum()),
            "usable": bool(rms <= MAX_FIT_RMS and (coef >= 0).all())}


def refit(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile with every fit recomputed from its recorded points by ``fit_costs``
    (for profiles recorded before a change of the fit; the timings stay as measured)."""
    out = json.loads(json.dumps(profile))
    for c in out["configs"]:
        for f in c["fits"]:
            f.update(fit_costs([tuple(p) for p in f["points"]]))
    out["refit"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return out


def _design(points: list[tuple[int, str, int, float]]) -> np.ndarray:
    return np.array([[1.0, m, *(m * k * (kind == kk) for kk in KINDS)]
                     for m, kind, k, _ in points])


def _residuals(points: list[tuple[int, str, int, float]], coef: np.ndarray) -> np.ndarray:
    """Relative residual of each point: (measured - fitted) / measured."""
    y = np.array([us for *_, us in points])
    return (y - _design(points) @ coef) / y


def outliers(points: list[tuple[int, str, int, float]], fit: dict[str, float],
             tolerance: float = OUTLIER_TOLERANCE) -> list[int]:
    """Points more than ``tolerance`` (relative) above or below the fit: to time again.
    (A timing disturbed by something else on the GPU comes out slow, never fast.)"""
    coef = np.array([fit["launch_us"], fit["unit_us"], *(fit[f"{k}_us"] for k in KINDS)])
    return [i for i, r in enumerate(_residuals(points, coef)) if abs(r) > tolerance]


def programs_per_sm(n_regs: int, shared: int, num_warps: int,
                    limits: dict[str, int]) -> int:
    """Co-resident programs per SM allowed by registers (allocated per warp in units of
    REG_ALLOC_UNIT), shared memory and threads."""
    threads = 32 * num_warps
    per_warp = -(-n_regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = limits["regs_per_sm"] // max(per_warp * num_warps, 1)
    by_smem = limits["smem_per_sm"] // (shared + 1024) if shared else 32  # 1 KB reserved
    by_threads = limits["threads_per_sm"] // threads
    return max(1, min(by_regs, by_smem, by_threads, 32))


def register_budget(regs_per_sm: int, programs_per_sm: int, num_warps: int) -> int:
    """Registers per thread (at most 255) that let ``programs_per_sm`` programs of
    ``num_warps`` warps share an SM: the inverse of ``programs_per_sm``'s register rule
    (a multiple of 8 per thread fills whole REG_ALLOC_UNITs per warp)."""
    per_thread = regs_per_sm // (programs_per_sm * num_warps * 32)
    return min(255, per_thread // (REG_ALLOC_UNIT // 32) * (REG_ALLOC_UNIT // 32))


def occupancies(r_max: int) -> list[int]:
    return sorted({1, max(1, (r_max + 1) // 2), r_max})


# ------------------------------------------------------------------ synthetic workloads


def query_blocks(n_sm: int) -> int:
    """Query blocks of the synthetic graphs: a divisor of n_SM, so that n_SM * r * m units
    (whole programs of m units each) are n_qb x batch*heads for an integer batch*heads."""
    return next(d for d in range(MIN_QUERY_BLOCKS, n_sm + 1) if n_sm % d == 0) \
        if n_sm >= MIN_QUERY_BLOCKS else n_sm


def synthetic_graph(bm: int, bn: int, kind: str, k: int, n_qb: int) -> Any:
    """``n_qb`` query blocks, each with ``k`` tiles of one kind (full, column, partial).

    Query block i attends key blocks i, i+1, ..., i+k-1 (mod the key blocks). Inside a
    tile: every entry (full), the even columns of every row (column), or a checkerboard
    (partial: rows differ).
    """
    from sparsevit.graph import make_graph

    n = n_qb * bm
    n_kb = -(-n // bn)
    if n_kb < k:
        raise SparseVitError(f"{n_qb} query blocks of {bm} rows hold fewer than {k} key blocks")
    rows = np.arange(n)
    tile_cols = np.arange(bn)
    if kind == "full":
        keep = np.ones((2, bn), bool)
    elif kind == "column":
        keep = np.tile(tile_cols % 2 == 0, (2, 1))
    elif kind == "partial":
        keep = np.stack([tile_cols % 2 == 0, tile_cols % 2 == 1])
    else:
        raise SparseVitError(f"unknown tile kind {kind!r}")
    kbs = ((rows // bm)[:, None] + np.arange(k)[None, :]) % n_kb  # (n, k) key blocks
    kbs.sort(axis=1)
    pattern = keep[rows % 2]  # (n, bn) columns kept inside each tile, per row
    cols = kbs[:, :, None] * bn + tile_cols[None, None, :]
    mask = np.broadcast_to(pattern[:, None, :], cols.shape) & (cols < n)
    indices = cols[mask]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(mask.reshape(n, -1).sum(1), out=indptr[1:])
    adj = sp.csr_matrix((np.ones(indices.shape[0], bool), indices, indptr), shape=(n, n))
    return make_graph(adj, f"profile-{kind}-{k}")


def even_programs(n_units: int, n_programs: int) -> dict[str, list[int]]:
    """Units 0..n-1 in contiguous runs over programs, run lengths differing by at most one."""
    bounds = (np.arange(n_programs + 1) * n_units) // n_programs
    return {"ptr": bounds.tolist(), "units": list(range(n_units))}


# -------------------------------------------------------------------------- measuring


def measure(dtype: str = "bf16", head_dim: int = 64, shapes: list[tuple[int, int]] | None = None,
            launches: list[tuple[int, int]] | None = None, quick: bool = False) -> dict[str, Any]:
    """Profile every candidate config on the current GPU (see the module doc)."""
    import torch
    from tqdm import tqdm

    from sparsevit import planner

    gpu = current_gpu()
    if gpu is None:
        raise SparseVitError("profiling times the kernel on a GPU and no CUDA GPU is visible; "
                             "on a CPU-only machine use a profile recorded on the target GPU")
    if dtype not in DTYPES:
        raise SparseVitError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    t_start = time.perf_counter()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    limits = {
        "regs_per_sm": int(getattr(props, "regs_per_multiprocessor", 65536)),
        "smem_per_sm": int(getattr(props, "shared_memory_per_multiprocessor", 233472)),
        "threads_per_sm": int(getattr(props, "max_threads_per_multi_processor", 2048)),
    }
    n_sm = int(props.multi_processor_count)
    shapes = list(shapes or planner.TILE_CANDIDATES)
    launches = list(launches or planner.LAUNCH_CANDIDATES)
    runner = _Runner(n_sm, head_dim, torch_dtype)
    configs = []
    bar = tqdm([(s, w) for s in shapes for w in launches], desc="profile", unit="config",
               file=sys.stderr, disable=None)
    for (bm, bn), (warps, stages) in bar:
        bar.set_postfix_str(f"{bm}x{bn} w{warps} s{stages}")
        cfg = {"bm": bm, "bn": bn, "num_warps": warps, "num_stages": stages}
        try:
            resources = runner.resources(cfg)
        except Exception as e:  # a config the compiler cannot fit (shared memory, say)
            configs.append({**cfg, "status": "NS", "reason": str(e).splitlines()[0][:200]})
            continue
        r_max = programs_per_sm(resources["n_regs"], resources["shared_bytes"], warps, limits)
        fits = []
        for r in occupancies(r_max)[-1:] if quick else occupancies(r_max):
            design = [(kind, m, k) for kind in KINDS for m, k in DESIGN]
            points = [(m_eff, kind, k, us) for kind, m, k in design
                      for m_eff, us in [runner.time(cfg, kind, k, m, n_sm * r)]]
            again = outliers(points, fit_costs(points))
            for i in again:  # keep the faster of two timings of a disturbed point
                kind, m, k = design[i]
                m_eff, us = runner.time(cfg, kind, k, m, n_sm * r)
                points[i] = (m_eff, kind, k, min(us, points[i][3]))
            fits.append({"programs_per_sm": r, **fit_costs(points), "retimed": len(again),
                         "points": [list(p) for p in points]})
        configs.append({**cfg, **resources, "max_programs_per_sm": r_max, "fits": fits})
    good = [c for c in configs if "fits" in c]
    if not good:
        raise SparseVitError("no kernel config could be profiled on this GPU")
    combine = [runner.combine(next(c for c in good if c["bm"] == bm))
               for bm in sorted({c["bm"] for c in good})]
    return {
        "version": VERSION, "gpu": gpu, "sm_count": n_sm, "limits": limits,
        "software": software(), "dtype": dtype, "head_dim": head_dim,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "configs": [c for c in configs if "fits" in c],
        "skipped": [c for c in configs if "fits" not in c],
        "combine": combine, "dense": runner.dense(),
        "elapsed_s": round(time.perf_counter() - t_start, 1), "quick": quick,
    }


def combine_fit(points: list[tuple[int, int, float]]) -> dict[str, float]:
    """(launch_us, wave_us, chunk_us) through three (waves, chunks, µs) points, two of one
    wave and two of the same chunk count: the combine pass costs launch_us + waves *
    (wave_us + chunk_us * chunks) (``Costs.combine_us``). Each is clamped at zero: a
    negative cost is timing noise, and pricing splits below nothing would make the
    scheduler cut rows for free."""
    (w1, c1, t1), (w2, c2, t2), (w3, c3, t3) = points
    if not (w1 == w2 and c2 == c3 and c1 != c2 and w2 != w3):
        raise SparseVitError(f"combine points need two of one wave and two of one chunk "
                             f"count, got {points}")
    chunk_us = max(0.0, (t2 - t1) / (c2 - c1) / w1)
    per_wave = (t3 - t2) / (w3 - w2)  # wave_us + chunk_us * c2
    wave_us = max(0.0, per_wave - chunk_us * c2)
    launch_us = max(0.0, t2 - w2 * (wave_us + chunk_us * c2))
    return {"launch_us": launch_us, "wave_us": wave_us, "chunk_us": chunk_us}


class _Runner:
    """Times sparsevit's own kernel (``sv.attention`` on a scheduled plan) on synthetic graphs."""

    def __init__(self, n_sm: int, head_dim: int, dtype: Any, device: str = "cuda") -> None:
        self.n_sm, self.head_dim, self.dtype, self.device = n_sm, head_dim, dtype, device
        self.graphs: dict[tuple, Any] = {}

    def _graph(self, bm: int, bn: int, kind: str, k: int) -> Any:
        key = (bm, bn, kind, k)
        if key not in self.graphs:
            self.graphs[key] = synthetic_graph(bm, bn, kind, k,
                                               max(query_blocks(self.n_sm), -(-k * bn // bm)))
        return self.graphs[key]

    def _plan(self, cfg: dict[str, int], graph: Any, n_bh: int, max_tiles: int,
              programs: int | None) -> Any:
        import sparsevit as sv
        from sparsevit import planner
        from sparsevit.schedule import Schedule

        lay = planner.tile_layout(graph, (cfg["bm"], cfg["bn"]), False)
        n_items = int(planner.make_work_items(lay.tiles, max_tiles,
                                              planner.idle_blocks(lay)).qb.shape[0])
        sched = Schedule(
            method="greedy", gpu="profile", software={}, n_tokens=graph.n_tokens,
            nnz=graph.nnz, batch=1, heads=n_bh, head_dim=self.head_dim,
            dtype="bf16", max_tiles=max_tiles, n_items=n_items,
            # the occupancy timed: the launch caps registers so that it is the real one
            config={**cfg, "programs_per_sm": programs // self.n_sm} if programs else cfg,
            programs=None if programs is None else even_programs(n_items * n_bh, programs),
            predicted_us=0.0, solver={"name": "none", "status": "profile", "objective": None,
                                      "gap": None, "time_s": 0.0})
        return sv.plan(graph, reorder="none", heads=n_bh, head_dim=self.head_dim,
                       device=self.device, batch=1, dtype=self.dtype, schedule=sched, pad=False)

    def _bench(self, plan: Any) -> float:
        import torch

        import sparsevit as sv
        from sparsevit import timing

        q, k, v = (torch.randn(1, plan.heads, plan.n_tokens, self.head_dim, device=self.device,
                               dtype=self.dtype) for _ in range(3))
        return timing.bench(lambda: sv.attention(q, k, v, plan), warmup_ms=5,
                            rep_ms=20)["median_us"]

    def time(self, cfg: dict[str, int], kind: str, k: int, m: int,
             programs: int) -> tuple[int, float]:
        """(units on the busiest program, µs) for ``programs`` programs of ~m units of k tiles."""
        graph = self._graph(cfg["bm"], cfg["bn"], kind, k)
        n_qb = -(-graph.n_tokens // cfg["bm"])
        n_bh = -(-programs * m // n_qb)
        plan = self._plan(cfg, graph, n_bh, k, programs)
        return -(-n_qb * n_bh // programs), self._bench(plan)

    def resources(self, cfg: dict[str, int]) -> dict[str, int]:
        """Registers, spills and shared memory of the compiled persistent kernel."""
        from sparsevit.kernels import block_sparse_attn as kmod

        before = _compiled(kmod.block_sparse_attn_fwd)
        graph = self._graph(cfg["bm"], cfg["bn"], "full", 2)
        self._bench(self._plan(cfg, graph, 1, 2, self.n_sm))
        new = [k for key, k in _compiled(kmod.block_sparse_attn_fwd).items() if key not in before]
        if not new:
            raise RuntimeError("could not find the compiled kernel of this config")
        kernel = new[-1]
        return {"n_regs": int(kernel.n_regs), "n_spills": int(kernel.n_spills),
                "shared_bytes": int(kernel.metadata.shared)}

    def combine(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Cost of merging split rows at tile height bm: measured time minus the fitted
        main pass, for query blocks of 8 full tiles cut into 2 and 4 chunks (one wave of
        split blocks) and into 4 chunks at 8x the batch*heads (several waves)."""
        from sparsevit.schedule.model import Costs

        fit = cfg["fits"][0]
        r = fit["programs_per_sm"]
        c = Costs(cfg["bm"], cfg["bn"], cfg["num_warps"], cfg["num_stages"], r,
                  fit["launch_us"], fit["unit_us"], fit["full_us"], fit["column_us"],
                  fit["partial_us"], 0.0, 0.0, 0.0)
        graph = self._graph(cfg["bm"], cfg["bn"], "full", 8)
        n_qb = -(-graph.n_tokens // cfg["bm"])
        points = []
        for n_bh, chunks in ((4, 2), (4, 4), (32, 4)):
            max_tiles = 8 // chunks
            plan = self._plan(cfg, graph, n_bh, max_tiles, self.n_sm * r)
            busiest = -(-plan.items.qb.shape[0] * n_bh // (self.n_sm * r))
            main = c.launch_us + busiest * (c.unit_us + max_tiles * c.full_us)
            waves = math.ceil(n_qb * n_bh / self.n_sm)
            points.append((waves, chunks, self._bench(plan) - main))
        return {"bm": cfg["bm"], **combine_fit(points), "points": [list(p) for p in points]}

    def dense(self) -> list[dict[str, Any]]:
        """Dense SDPA (flash, cuDNN) on fully dense attention, 12 heads: the vendor kernel a
        large fully dense region could use instead."""
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        from sparsevit import timing

        out = []
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            for n in DENSE_TOKENS:
                q, k, v = (torch.randn(1, 12, n, self.head_dim, device="cuda", dtype=self.dtype)
                           for _ in range(3))

                def call(q=q, k=k, v=v, backend=backend):
                    with sdpa_kernel(backend):
                        return sdpa(q, k, v)

                try:
                    us = timing.bench(call, warmup_ms=5, rep_ms=30)["median_us"]
                except RuntimeError as e:
                    out.append({"backend": name, "tokens": n, "status": "NS",
                                "reason": str(e).splitlines()[0][:200]})
                    continue
                flops = 4 * n * n * self.head_dim * 12
                out.append({"backend": name, "tokens": n, "heads": 12, "us": us,
                            "tflops": flops / us / 1e6, "status": "OK"})
        return out + [self._vendor_path(n) for n in VENDOR_PATH_TOKENS]

    def _vendor_path(self, n: int) -> dict[str, Any]:
        """``sv.attention`` (original token order) on an all-dense graph of ``n`` tokens,
        which the plan runs as one dense rectangle."""
        import torch

        import sparsevit as sv
        from sparsevit import masks, timing
        from sparsevit.schedule.model import VENDOR_PATH

        plan = sv.plan(masks.dense(n), reorder="none", device=self.device, heads=12,
                       head_dim=self.head_dim, num_warps=4, num_stages=2, pad=False,
                       dense=True)
        q, k, v = (torch.randn(1, 12, n, self.head_dim, device=self.device, dtype=self.dtype)
                   for _ in range(3))
        us = timing.bench(lambda: sv.attention(q, k, v, plan), warmup_ms=5,
                          rep_ms=30)["median_us"]
        return {"backend": VENDOR_PATH, "tokens": n, "heads": 12, "us": us,
                "tflops": 4 * n * n * self.head_dim * 12 / us / 1e6, "status": "OK"}


def _compiled(jit_fn: Any) -> dict[Any, Any]:
    """Every compiled variant of a Triton JIT function: {cache key: CompiledKernel}."""
    found = {}
    for device, caches in jit_fn.device_caches.items():
        for key, kernel in caches[0].items():
            found[(device, key)] = kernel.result() if hasattr(kernel, "result") else kernel
    return found


# ------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="T3: profile kernel configs on this GPU",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--output", type=Path, help="also write the profile here")
    p.add_argument("--quick", action="store_true",
                   help="fewer points and only the highest occupancy (smoke runs)")
    p.add_argument("--force", action="store_true", help="re-measure even when cached")
    p.add_argument("--refit", type=Path, metavar="PROFILE",
                   help="recompute the fits of a recorded profile from its points (no GPU); "
                        "written to --output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.refit:
        if not args.output:
            raise SparseVitError("--refit needs --output")
        prof = refit(load(args.refit))
        save(prof, args.output)
        _print(prof)
        print(f"wrote {args.output}")
        return 0
    gpu = current_gpu()
    if gpu is None:
        raise SparseVitError("sparsevit profile needs a CUDA GPU and none is visible; on a "
                             "CPU-only machine give `sparsevit schedule --profile` a profile "
                             "recorded on the target GPU")
    path = cache_dir() / cache_key(gpu, software(), args.dtype, args.head_dim)
    if path.is_file() and not args.force:
        prof = load(path)
        print(f"cached profile {path} (use --force to re-measure)")
    else:
        prof = measure(args.dtype, args.head_dim, quick=args.quick)
        save(prof, path)
        print(f"wrote {path}")
    if args.output:
        save(prof, args.output)
        print(f"wrote {args.output}")
    _print(prof)
    return 0


def _print(prof: dict[str, Any]) -> None:
    from tabulate import tabulate

    rows = [{"config": f"{c['bm']}x{c['bn']} w{c['num_warps']} s{c['num_stages']}",
             "regs": c.get("n_regs"), "spills": c.get("n_spills"), "smem": c.get("shared_bytes"),
             "r/SM": f["programs_per_sm"], "unit us": f["unit_us"], "full us": f["full_us"],
             "column us": f["column_us"], "partial us": f["partial_us"],
             "launch us": f["launch_us"], "fit rms": f["rel_rms"],
             "left out": f.get("left_out", 0)}
            for c in prof["configs"] for f in c["fits"]]
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
