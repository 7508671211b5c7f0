"""``sparsevit bench-attn``: time sparsevit's attention against every baseline on one graph.

One cell log per backend (figure ``attn``), written as soon as the backend finishes and
rewritten at the end with the ratio ``sparsevit_speedup`` = backend time / sparsevit time
(> 1: sparsevit is faster). Exit status 1 when any backend FAILed (check or crash).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from sparsevit import celllog, masks, provenance
from sparsevit.blocks import parse_tile
from sparsevit.errors import SparseVitError
from sparsevit.graph import AttentionGraph

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
# Elementwise |out - ref| <= atol + rtol * |ref| against the fp32 reference. Rounding the
# probabilities and the output to 8 (bf16) or 11 (fp16) mantissa bits stays well inside.
TOLERANCE = {"bf16": (2e-2, 2e-2), "fp16": (5e-3, 5e-3)}
# The header keys of the plan tuned for pre-ordered inputs (logged as ordered_plan_*).
ORDERED_PLAN_KEYS = ("plan_tile", "plan_num_warps", "plan_num_stages", "plan_positions",
                     "plan_us", "plan_tuned_us", "plan_s")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench-attn`` subcommand; its handler is ``args.func(args) -> int``."""
    from sparsevit.baselines import REGISTRY

    p = subparsers.add_parser(
        "bench-attn", help="time sparsevit attention against baselines on one graph",
        description=__doc__.split("\n\n", 1)[1],
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=sorted(masks.MODEL_GRAPHS), help="build this model's graph")
    src.add_argument("--input", type=Path, metavar="MASK",
                     help="a saved graph or mask (.npz, .npy, .pt)")
    p.add_argument("--resolution", type=int, default=2048, help="image side in pixels")
    p.add_argument("--patch", type=int, default=16, help="patch side in pixels")
    p.add_argument("--backends", default="all",
                   help=f"'all' or a comma list of: {', '.join(REGISTRY)}")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--reorder", default="auto",
                   help="token reordering of the plan (auto: the one needing fewest tiles)")
    p.add_argument("--tile", default="auto",
                   help="sparsevit tile BMxBN, or 'auto' (the planner times the candidates)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random q, k, v")
    p.add_argument("--out", type=Path, default=Path("results/bench_attn"),
                   help="directory of the cell logs")
    p.add_argument("--check", action="store_true",
                   help="compare every output with the fp32 reference (FAIL beyond tolerance)")
    p.add_argument("--backend-timeout", type=float, default=300, metavar="S",
                   help="wall-time limit per backend (build, check and timing); over it the "
                        "backend is logged as TLE and the run goes on (0: no limit)")
    p.set_defaults(func=run)
    return p


def select_backends(spec: str) -> list[str]:
    """'all' or 'a,b,c' -> registry names in the order given, duplicates dropped."""
    from sparsevit.baselines import REGISTRY

    if spec.strip() == "all":
        return list(REGISTRY)
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [s for s in names if s not in REGISTRY]
    if unknown or not names:
        raise SparseVitError(f"unknown backend(s) {', '.join(unknown) or spec!r}; "
                             f"choose from: all, {', '.join(REGISTRY)}")
    return names


def _graph_from_args(args: argparse.Namespace) -> tuple[AttentionGraph, str, str]:
    """(graph, model name, resolution label) for the cell names."""
    if args.input is not None:
        graph = masks.load(args.input)
        model = re.sub(r"[^A-Za-z0-9_-]+", "-", graph.name).strip("-") or "mask"
        return graph, model, f"{graph.n_tokens}tok"
    grid = masks.grid_for(args.resolution, args.patch)
    return masks.MODEL_GRAPHS[args.model](grid), args.model, str(args.resolution)


def check_output(out: Any, ref: Any, dtype: str) -> dict[str, Any]:
    """Worst elementwise error over the tolerance (<= 1 passes; NaN fails)."""
    atol, rtol = TOLERANCE[dtype]
    err = (out.float() - ref).abs()
    worst = float((err / (atol + rtol * ref.abs())).max())
    return {"max_abs_err": float(err.max()), "err_over_tol": worst, "check": worst <= 1.0}


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sparsevit import timing
    from sparsevit.baselines import ORIGINAL, PLAN_ORDER, REGISTRY

    for what in ("batch", "heads", "head_dim", "resolution", "patch"):
        if getattr(args, what) <= 0:
            raise SparseVitError(f"--{what.replace('_', '-')} must be positive")
    if not torch.cuda.is_available():
        raise SparseVitError("bench-attn needs a CUDA GPU and none is visible")
    names = select_backends(args.backends)
    tile = args.tile if args.tile == "auto" else parse_tile(args.tile)
    graph, model, resolution = _graph_from_args(args)
    dtype = getattr(torch, DTYPES[args.dtype])
    device = f"cuda:{torch.cuda.current_device()}"  # explicit index: plan and inputs must match
    info = provenance.collect()
    dev = provenance.device_tag(info)

    plan, plan_info = None, {}
    plans = {}  # baseline token order -> the plan it runs (tuned for that input form)
    if any(REGISTRY[n].needs_plan for n in names):
        plan, plan_info = _make_plan(graph, args, tile, dtype, device)
        plans = {ORIGINAL: plan, PLAN_ORDER: plan}
        if plan is not None and any(REGISTRY[n].order == PLAN_ORDER for n in names):
            ordered_plan, ordered_info = _make_plan(graph, args, tile, dtype, device,
                                                    ordered=True)
            if ordered_plan is not None:
                plans[PLAN_ORDER] = ordered_plan
            plan_info.update({f"ordered_{key}": val for key, val in ordered_info.items()
                              if key in ORDERED_PLAN_KEYS})
    peaks = timing.measure_peaks(device)

    shape = (args.batch, args.heads, graph.n_tokens, args.head_dim)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    inputs = {"original": (q, k, v)}
    if plan is not None:  # the reordered baselines' token order, and the plan's padded form
        inputs["reordered"] = tuple(t.index_select(2, plan.token_order) for t in (q, k, v))
        inputs["plan"] = tuple(plans[PLAN_ORDER].permute(t) for t in (q, k, v))

    flops = timing.attention_flops(graph.nnz, args.head_dim, args.heads, args.batch)
    n_bytes = timing.attention_bytes(graph.n_tokens, args.head_dim, args.heads, args.batch,
                                     q.element_size())
    floor = timing.floor_us(flops, n_bytes, peaks)
    header = {
        **info, "figure": "attn", "model": model, "resolution": resolution,
        "patch": args.patch if args.input is None else "-", **graph.summary(),
        "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
        "dtype": args.dtype, "seed": args.seed, "reorder": args.reorder, **plan_info,
        **{f"peak_{key}": val for key, val in peaks.items()},
        "useful_flops": flops, "min_bytes": n_bytes, "floor_us": round(floor, 3),
    }

    refs: dict[bool, Any] = {}  # dense? -> fp32 reference output, computed on first need
    rows: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    dead = ""  # the backend after which the CUDA context was lost
    bar = tqdm(names, desc="bench-attn", unit="backend", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        base = REGISTRY[name]
        if dead:
            row = {**_row_head(name), "status": "FAIL",
                   "reason": f"not run: the CUDA context died in {dead}"}
        elif base.needs_plan and plan is None:
            row = {**_row_head(name), "status": plan_info["plan_status"],
                   "reason": f"planning failed: {plan_info['plan_error']}"}
        else:
            if args.check and base.dense not in refs:
                refs[base.dense] = _reference(q, k, v, None if base.dense else graph)
            row = measure_backend(name, plans.get(base.order, plan) or graph,
                           inputs[base.order],
                           refs.get(base.dense), args.dtype, flops, floor,
                           args.backend_timeout)
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()  # each backend starts from the same free memory
            except Exception:  # a sticky error (illegal address): nothing else can run here
                dead = name
        rows[name] = row
        paths[name] = args.out / celllog.cell_name("attn", dev, model, resolution, name)
        celllog.write(paths[name], {**header, "backend": name}, [row])

    _add_speedups(rows)
    for name, row in rows.items():
        celllog.write(paths[name], {**header, "backend": name}, [row])
    _print_table(rows, header)
    return 1 if any(r["status"] == "FAIL" for r in rows.values()) else 0


def _make_plan(graph: AttentionGraph, args: argparse.Namespace, tile: Any, dtype: Any,
               device: str, ordered: bool = False) -> tuple[Any, dict[str, Any]]:
    """(plan or None, header entries), tuned for original-order inputs or, ``ordered``,
    plan-order ones. Bad arguments raise; a planner crash (its kernel autotuning, say)
    only fails the backends that need the plan."""
    import sparsevit as sv
    from sparsevit.baselines import classify

    t0 = time.perf_counter()
    try:
        plan = sv.plan(graph, reorder=args.reorder, tile=tile, heads=args.heads,
                       head_dim=args.head_dim, device=device, batch=args.batch, dtype=dtype,
                       ordered=ordered)
    except SparseVitError:
        raise
    except Exception as e:  # the run goes on without sparsevit
        status, reason = classify(e)
        return None, {"plan_status": "FAIL" if status == "NS" else status, "plan_error": reason}
    info = {f"plan_{key}": val for key, val in plan.describe().items()}
    return plan, {**info, "plan_s": round(time.perf_counter() - t0, 3)}


def _reference(q: Any, k: Any, v: Any, graph: AttentionGraph | None) -> Any:
    import torch

    from sparsevit.baselines import reference

    try:
        return reference(q, k, v, graph)
    except torch.cuda.OutOfMemoryError:
        raise SparseVitError("--check: the fp32 reference ran out of GPU memory") from None


def _row_head(name: str) -> dict[str, Any]:
    from sparsevit.baselines import REGISTRY

    base = REGISTRY[name]
    return {"backend": name, "label": base.label, "dense": base.dense, "order": base.order}


def measure_backend(name: str, source: Any, inputs: tuple[Any, Any, Any], ref: Any, dtype: str,
             flops: int, floor: float, limit_s: float) -> dict[str, Any]:
    """One backend on ``source`` (plan or graph) within ``limit_s`` seconds: build, first
    call, optional check, then timing. Never raises."""
    from sparsevit import timing

    row = _row_head(name)
    try:
        with timing.time_limit(limit_s):
            return _measure_within(name, row, source, inputs, ref, dtype, flops, floor)
    except timing.TimeLimitExceeded as e:
        return {**row, "status": "TLE", "reason": f"{name} ran {e}"}


def _to_original_order(out: Any, source: Any, order: str) -> Any:
    import torch

    if order == "plan":
        return source.unpermute(out)
    if order == "reordered":
        return out.index_select(2, torch.argsort(source.token_order))
    return out


def _measure_within(name: str, row: dict[str, Any], source: Any,
                    inputs: tuple[Any, Any, Any], ref: Any, dtype: str, flops: int,
                    floor: float) -> dict[str, Any]:
    from sparsevit import timing
    from sparsevit.baselines import REGISTRY, classify, prepare

    base = REGISTRY[name]
    prep = prepare(name, source, *inputs)
    row["status"] = prep.status
    if prep.status != "OK":
        return {**row, "reason": prep.reason}
    row.update(build_ms=prep.build_ms, first_call_ms=prep.first_call_ms, **prep.runnable.info)
    if ref is not None:
        out = _to_original_order(prep.out, source, base.order)
        row.update(check_output(out, ref, dtype))
        if not row["check"]:
            row.update(status="FAIL", reason=f"error {row['err_over_tol']:.3g}x the {dtype} "
                                             "tolerance against the fp32 reference")
    prep.out = None  # free before timing
    try:
        row.update(timing.bench(prep.runnable.call))
        if prep.runnable.setup is not None:
            row["setup_us"] = timing.bench(prep.runnable.setup)["median_us"]
    except Exception as e:  # e.g. OOM from do_bench's own buffers
        status, reason = classify(e)
        return {**row, "status": status, "reason": reason}
    row["useful_tflops"] = flops / (row["median_us"] * 1e-6) / 1e12
    row["x_floor"] = row["median_us"] / floor
    return row


def _add_speedups(rows: dict[str, dict[str, Any]]) -> None:
    ours = rows.get("sparsevit", {})
    if ours.get("status") != "OK":
        return
    for row in rows.values():
        if "median_us" in row:
            row["sparsevit_speedup"] = row["median_us"] / ours["median_us"]


def _print_table(rows: dict[str, dict[str, Any]], header: dict[str, Any]) -> None:
    from tabulate import tabulate

    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"

    table = [
        [name, r["label"], r["status"], fmt(r, "median_us", ".1f"),
         f"{fmt(r, 'p20_us', '.1f')}-{fmt(r, 'p80_us', '.1f')}", fmt(r, "useful_tflops", ".1f"),
         fmt(r, "x_floor", ".2f"), fmt(r, "sparsevit_speedup", ".2f"), r.get("reason", "")]
        for name, r in rows.items()
    ]
    print(f"{header['model']} {header['resolution']}: {header['tokens']} tokens, "
          f"density {header['density']}, floor {header['floor_us']} us "
          f"(peaks {header['peak_matmul_tflops']:.0f} TFLOP/s, "
          f"{header['peak_copy_gbps']:.0f} GB/s)")
    print(tabulate(table, headers=["backend", "label", "status", "median us", "p20-p80 us",
                                   "useful TFLOP/s", "x floor", "sparsevit speedup", "reason"]))
