"""``sparsevit ablation`` and ``sparsevit overhead``: the two scheduling figures' cells.

ablation (one cell = one model at one resolution): dense FlashAttention (SDPA's flash
kernel; the flash_attn package is absent on our GPU images), FlexAttention (compiled,
64-blocks on the Hilbert-ordered tokens: its best setting), and sparsevit for
every reorder in {none, rcm, hc, ic, hilbert} x schedule in {fixed, greedy, ilp}. Every
output is checked against the fp32 reference; each sparsevit row also holds the
schedule's predicted time, so the plot can report the prediction error.

overhead (same cells): the time of each preprocessing stage (graph, reorder, extract,
profile, solve) against one inference, and the inferences needed to amortise it.

Schedules are solved first, in worker processes (CPU only, before this process touches
the GPU), then timed one at a time on the GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sparsevit import celllog, masks, provenance
from sparsevit.errors import SparseVitError

REORDERS = ("none", "rcm", "hc", "ic", "hilbert")
METHODS = ("fixed", "greedy", "ilp")
FLEX = "flex_b64_reordered"  # its best setting on these graphs (issue 3): Hilbert, 64-blocks
DENSE = ("sdpa_flash", "sdpa_cudnn")
SHAPE = {"batch": 1, "heads": 12, "head_dim": 64, "dtype": "bf16"}
LIMIT_S = 90.0  # one backend's build + check + timing (FlexAttention compiles inside)


def ours(reorder: str, method: str) -> str:
    return f"{reorder}-{method}"


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, func, doc in (("ablation", run_ablation, "schedule ablation cell (GPU)"),
                            ("overhead", run_overhead, "preprocessing overhead cell (GPU)")):
        p = subparsers.add_parser(name, help=doc)
        p.add_argument("--model", required=True, choices=sorted(masks.MODEL_GRAPHS))
        p.add_argument("--resolution", type=int, required=True)
        p.add_argument("--patch", type=int, default=16)
        p.add_argument("--profile", help="profile JSON (default: this GPU's cached profile)")
        p.add_argument("--time-limit", type=float, default=1.0, help="ILP seconds per solve")
        p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                       help="worker processes solving schedules")
        p.add_argument("--out", type=Path, required=True)
        p.set_defaults(func=func)


def _graph(model: str, resolution: int, patch: int) -> Any:
    return masks.MODEL_GRAPHS[model](masks.grid_for(resolution, patch))


def _solve_one(job: tuple) -> dict[str, Any]:
    """Worker: reorder and schedule one variant; returns the schedule and stage times."""
    from sparsevit import reorder as reorder_mod
    from sparsevit import schedule

    model, resolution, patch, reorder, method, profile, gpu, time_limit = job
    t0 = time.perf_counter()
    graph = _graph(model, resolution, patch)
    t1 = time.perf_counter()
    try:
        ordered = reorder_mod.apply(graph, reorder_mod.get(reorder)(graph))
        t2 = time.perf_counter()
        sched = schedule.solve(ordered, profile, method, time_limit=time_limit, gpu=gpu,
                               **SHAPE)
    except SparseVitError as e:
        return {"reorder": reorder, "method": method, "error": str(e)}
    t3 = time.perf_counter()
    return {"reorder": reorder, "method": method, "schedule": sched.to_dict(),
            "graph_s": t1 - t0, "reorder_s": t2 - t1, "solve_s": t3 - t2}


def solve_all(args: argparse.Namespace, profile: dict[str, Any],
              variants: list[tuple[str, str]]) -> list[dict[str, Any]]:
    jobs = [(args.model, args.resolution, args.patch, r, m, profile, profile["gpu"],
             args.time_limit) for r, m in variants]
    if args.jobs <= 1:
        return [_solve_one(j) for j in jobs]
    with ProcessPoolExecutor(min(args.jobs, len(jobs))) as pool:
        return list(pool.map(_solve_one, jobs))


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """Check the arguments and load the profile, before any work."""
    from sparsevit import profile as profile_mod

    if args.resolution <= 0 or args.patch <= 0:
        raise SparseVitError("--resolution and --patch must be positive")
    masks.grid_for(args.resolution, args.patch)  # a resolution the patch does not divide
    return profile_mod.load(args.profile)


def _cuda_inputs(graph: Any) -> tuple[Any, Any, Any, str]:
    import torch

    if not torch.cuda.is_available():
        raise SparseVitError("this cell times kernels and needs a CUDA GPU; none is visible")
    device = f"cuda:{torch.cuda.current_device()}"
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (SHAPE["batch"], SHAPE["heads"], graph.n_tokens, SHAPE["head_dim"])
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    return q, k, v, device


def _header(figure: str, args: argparse.Namespace, graph: Any, prof: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    return {**provenance.collect(), "figure": figure, "model": args.model,
            "resolution": args.resolution, "patch": args.patch, **graph.summary(), **SHAPE,
            "profile_gpu": prof["gpu"], "profile_date": prof.get("date"), **extra}


def _schedule_row(solved: dict[str, Any]) -> dict[str, Any]:
    s = solved["schedule"]
    return {"reorder": solved["reorder"], "method": solved["method"],
            "predicted_us": s["predicted_us"], "lower_bound_us": s["lower_bound_us"],
            "config": s["config"], "max_tiles": s["max_tiles"], "n_items": s["n_items"],
            "programs": None if s["programs"] is None else len(s["programs"]["ptr"]) - 1,
            "solver": s["solver"], "solve_s": solved["solve_s"],
            "reorder_s": solved["reorder_s"], "details": s["details"]}


def _time_ours(graph: Any, solved: dict[str, Any], qkv: tuple, device: str, ref: Any,
               flops: int, floor: float) -> dict[str, Any]:
    """The row of sparsevit with ``solved``'s schedule; never raises."""
    import torch

    import sparsevit as sv
    from sparsevit.baselines import classify
    from sparsevit.bench_attn import measure_backend
    from sparsevit.schedule import Schedule

    name = ours(solved["reorder"], solved["method"])
    if "error" in solved:
        return {"system": name, "status": "NS", "reason": solved["error"][:300]}
    row = {"system": name, **_schedule_row(solved)}
    try:
        t0 = time.perf_counter()
        plan = sv.plan(graph, reorder=solved["reorder"], device=device,
                       schedule=Schedule.from_dict(solved["schedule"]),
                       dtype=torch.bfloat16, **{k: SHAPE[k] for k in
                                                ("batch", "heads", "head_dim")})
        row["plan_s"] = time.perf_counter() - t0
    except Exception as e:  # a schedule the planner refuses is this cell's FAIL, not a crash
        status, reason = classify(e)
        return {**row, "status": "FAIL" if status == "NS" else status, "reason": reason}
    measured = measure_backend("sparsevit", plan, qkv, ref, "bf16", flops, floor, LIMIT_S)
    measured.pop("backend", None)
    row.update(measured)
    if "median_us" in row:
        row["pred_err"] = (row["predicted_us"] - row["median_us"]) / row["median_us"]
    return row


def _baseline(name: str, source: Any, qkv: tuple, ref: Any, flops: int,
              floor: float) -> dict[str, Any]:
    from sparsevit.bench_attn import measure_backend

    return measure_backend(name, source, qkv, ref, "bf16", flops, floor, LIMIT_S)


def _prepare_gpu(graph: Any, prof: dict[str, Any]) -> tuple:
    from sparsevit import profile as profile_mod
    from sparsevit import timing
    from sparsevit.bench_attn import _reference

    q, k, v, device = _cuda_inputs(graph)
    if profile_mod.current_gpu() != prof["gpu"]:
        raise SparseVitError(f"the profile is of {prof['gpu']}, this GPU is "
                             f"{profile_mod.current_gpu()}")
    peaks = timing.measure_peaks(device, matmul_n=4096, copy_bytes=1 << 28)
    flops = timing.attention_flops(graph.nnz, SHAPE["head_dim"], SHAPE["heads"],
                                   SHAPE["batch"])
    n_bytes = timing.attention_bytes(graph.n_tokens, SHAPE["head_dim"], SHAPE["heads"],
                                     SHAPE["batch"], 2)
    floor = timing.floor_us(flops, n_bytes, peaks)
    refs = {False: _reference(q, k, v, graph), True: _reference(q, k, v, None)}
    return (q, k, v), device, flops, floor, refs, peaks


def run_ablation(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    prof = _setup(args)
    graph = _graph(args.model, args.resolution, args.patch)
    solved = solve_all(args, prof, [(r, m) for r in REORDERS for m in METHODS])
    qkv, device, flops, floor, refs, peaks = _prepare_gpu(graph, prof)
    header = _header("ablation", args, graph, prof,
                     {"floor_us": round(floor, 3),
                      **{f"peak_{k}": v for k, v in peaks.items()}})
    dev = provenance.device_tag(header)
    rows = {"flash": {"system": "flash", **_baseline("sdpa_flash", graph, qkv, refs[True],
                                                     flops, floor)}}
    for sol in tqdm(solved, desc=f"ablation {args.model} {args.resolution}", file=sys.stderr,
                    disable=None):
        name = ours(sol["reorder"], sol["method"])
        rows[name] = _time_ours(graph, sol, qkv, device, refs[False], flops, floor)
    # FlexAttention masks the Hilbert-ordered graph (no padding: Flex needs the token count).
    import torch

    import sparsevit as sv

    flex_plan = sv.plan(graph, reorder="hilbert", tile=(64, 64), num_warps=4, num_stages=2,
                        pad=False, device=device, dtype=torch.bfloat16,
                        **{k: SHAPE[k] for k in ("batch", "heads", "head_dim")})
    ordered = tuple(flex_plan.permute(t) for t in qkv)
    rows["flex"] = {"system": "flex", **_baseline(FLEX, flex_plan, ordered, refs[False],
                                                  flops, floor)}
    for system, row in rows.items():
        celllog.write(args.out / celllog.cell_name("ablation", dev, args.model,
                                                   args.resolution, system),
                      {**header, "system": system}, [row])
    _print(rows)
    return 0


def _print(rows: dict[str, dict[str, Any]]) -> None:
    from tabulate import tabulate

    table = [[name, r["status"], r.get("median_us"), r.get("predicted_us"), r.get("pred_err"),
              (r.get("config") or {}).get("bm"), r.get("max_tiles"), r.get("programs"),
              (r.get("solver") or {}).get("status"), r.get("reason", "")[:50]]
             for name, r in rows.items()]
    print(tabulate(table, headers=["system", "status", "median us", "predicted us", "pred err",
                                   "bm", "max_tiles", "programs", "solver", "reason"],
                   floatfmt=".4g"))


def run_overhead(args: argparse.Namespace) -> int:
    from sparsevit import planner, schedule
    from sparsevit import reorder as reorder_mod

    prof = _setup(args)
    # Every stage timed here, in this process, one after the other (no workers). The solve
    # stage includes laying out the tile shapes it considers; extract is the planner's
    # layout of the chosen one.
    t0 = time.perf_counter()
    graph = _graph(args.model, args.resolution, args.patch)
    t1 = time.perf_counter()
    # reorder="auto": every method is tried and the one needing the fewest tiles kept.
    method, _ = planner.choose_reorder(graph, planner.TILE_CANDIDATES[0])
    ordered = reorder_mod.apply(graph, reorder_mod.get(method)(graph))
    t2 = time.perf_counter()
    sched = schedule.solve(ordered, prof, "ilp", time_limit=args.time_limit, gpu=prof["gpu"],
                           **SHAPE)
    t3 = time.perf_counter()
    lay = planner.tile_layout(ordered, (sched.config["bm"], sched.config["bn"]))
    planner.make_work_items(lay.tiles, sched.max_tiles,
                            planner.idle_blocks(lay, sched.dense_spans()))
    t4 = time.perf_counter()
    stages = {"graph_s": t1 - t0, "reorder_s": t2 - t1, "extract_s": t4 - t3,
              "solve_s": t3 - t2, "profile_s": float(prof.get("elapsed_s", 0.0))}
    solved = {"reorder": method, "method": "ilp", "schedule": sched.to_dict(),
              "graph_s": stages["graph_s"], "reorder_s": stages["reorder_s"],
              "solve_s": stages["solve_s"]}
    qkv, device, flops, floor, refs, _ = _prepare_gpu(graph, prof)
    header = _header("overhead", args, graph, prof, {"floor_us": round(floor, 3)})
    dev = provenance.device_tag(header)
    row = _time_ours(graph, solved, qkv, device, refs[False], flops, floor)
    baselines = {name: _baseline(name, graph, qkv, refs[True], flops, floor) for name in DENSE}
    ok = {n: b["median_us"] for n, b in baselines.items() if b.get("status") == "OK"}
    result = {**row, "stages": stages, "baselines": baselines}
    if row.get("status") == "OK" and ok:
        best = min(ok, key=ok.__getitem__)
        saving = ok[best] - row["median_us"]
        prep = sum(v for k, v in stages.items() if k != "profile_s")
        result.update(best_baseline=best, best_baseline_us=ok[best], saving_us=saving,
                      preprocess_s=prep,
                      inferences_to_amortise=(prep * 1e6 / saving) if saving > 0 else None,
                      inferences_to_amortise_with_profile=(
                          (prep + stages["profile_s"]) * 1e6 / saving if saving > 0 else None))
    celllog.write(args.out / celllog.cell_name("overhead", dev, args.model, args.resolution,
                                               "sparsevit"), header, [result])
    from tabulate import tabulate

    print(tabulate([{**stages, "inference_us": row.get("median_us"),
                     "best_baseline_us": result.get("best_baseline_us"),
                     "amortise": result.get("inferences_to_amortise")}],
                   headers="keys", floatfmt=".4g"))
    return 0
