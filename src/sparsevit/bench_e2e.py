"""``sparsevit bench-e2e``: whole-model latency of sparse ViTs under every attention backend.

For each (model, resolution, batch, eager/compiled) cell: build the model once (random
init, bf16), run the no-attention floor (attention replaced by ``out = v``: it costs
nothing) and every requested backend on the same weights and image, compare each
backend's logits with the first exact backend that ran (``native`` under 'all'), time
the forward pass and write one log per backend (figure ``e2e``) with provenance, the
floor and the ratios.
Exit status 1 when a backend FAILed (crash or logits beyond the tolerance).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sparsevit import celllog, provenance
from sparsevit.errors import SparseVitError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Logits against the reference backend: |out - ref| <= atol + rtol * |ref|. Whole-model
# bf16 rounding differs between kernels (different summation orders through 12-24
# blocks); DynamicViT can also flip a near-tied keep decision.
LOGIT_TOLERANCE = {"bf16": (0.1, 0.1), "fp16": (2e-2, 2e-2), "fp32": (1e-3, 1e-3)}
FLOOR = "floor"
# Backends whose top CUDA kernels every log records (cheap: 3 more calls); --profile: all.
PROFILED = ("sparsevit", FLOOR)
# 'all': the reference (native: every model's own implementation) first, then the
# product, then the baselines whose build (Flex compilation) takes longest last.
RUN_ORDER = ("native", "sparsevit", "full", "dense", "flex")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from sparsevit.models import MODELS
    from sparsevit.models.attention import BACKENDS

    p = subparsers.add_parser(
        "bench-e2e", help="end-to-end latency of sparse ViTs per attention backend",
        description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True,
                   help=f"comma list of: {', '.join(MODELS)}")
    p.add_argument("--resolution", default="2048", help="comma list of image sides (px)")
    p.add_argument("--batch", default="1", help="comma list of batch sizes")
    p.add_argument("--backends", default="all",
                   help=f"'all' or a comma list of: {', '.join(b for b in BACKENDS if b != FLOOR)}"
                        " (the floor always runs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the whole model")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tile", default="64x64", help="sparsevit tile BMxBN or 'auto'")
    p.add_argument("--pad", default="auto", choices=("auto", "true", "false"),
                   help="let the planner pad token groups to tiles (sv.plan pad)")
    p.add_argument("--padding", default="gather", choices=("gather", "carry"),
                   help="padded plans: kernel gathers (gather) or the model carries pads")
    p.add_argument("--dense-layers", default="sdpa", choices=("sdpa", "kernel"),
                   help="dense attention layers under sparsevit: SDPA or sparsevit's kernel")
    p.add_argument("--profile", action="store_true",
                   help="log the top CUDA kernels of every backend (torch.profiler; "
                        "sparsevit's and the floor's are always logged)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/bench_e2e"),
                   help="directory of the cell logs")
    p.set_defaults(func=run)
    return p


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SparseVitError(f"--{what} must be a comma list of integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SparseVitError(f"--{what} must be positive integers, got {text!r}")
    return values


def select_backends(spec: str) -> list[str]:
    from sparsevit.models.attention import BACKENDS

    names = list(RUN_ORDER) if spec.strip() == "all" else list(
        dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [s for s in names if s not in BACKENDS or s == FLOOR]
    if unknown or not names:
        raise SparseVitError(f"unknown backend(s) {', '.join(unknown) or spec!r}; choose from "
                             f"all, {', '.join(b for b in BACKENDS if b != FLOOR)}")
    return names


def model_tag(name: str) -> str:
    """A model name as a cell-name part: 'ViT-B/16' -> 'ViT-B16'."""
    return name.replace("/", "")


def system_tag(backend: str, batch: int, compiled: bool) -> str:
    return f"{backend}-b{batch}-{'compile' if compiled else 'eager'}"


def validate(models: list[str], resolutions: list[int]) -> None:
    """Reject unknown models and resolutions a model cannot take, before any GPU work."""
    import torch

    from sparsevit.models import MODELS, create

    for name in models:
        if name not in MODELS:
            raise SparseVitError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        for res in resolutions:
            with torch.device("meta"):  # shapes and checks only, no memory
                create(name, res)


def run(args: argparse.Namespace) -> int:
    import torch

    models = list(dict.fromkeys(s.strip() for s in args.model.split(",") if s.strip()))
    resolutions = _int_list(args.resolution, "resolution")
    batches = _int_list(args.batch, "batch")
    backends = select_backends(args.backends)
    validate(models, resolutions)
    if not torch.cuda.is_available():
        raise SparseVitError("bench-e2e needs a CUDA GPU and none is visible")
    info = provenance.collect()
    device = torch.device("cuda", torch.cuda.current_device())
    failed = False
    for name in models:
        for res in resolutions:
            for batch in batches:
                failed |= run_cell(args, info, name, res, batch, backends, device)
    return 1 if failed else 0


def run_cell(args: argparse.Namespace, info: dict[str, Any], name: str, res: int, batch: int,
             backends: list[str], device: Any) -> bool:
    """One (model, resolution, batch, compile) cell: floor + backends. True if any FAILed."""
    import torch

    from sparsevit.models import create
    from sparsevit.models.attention import EXACT_BACKENDS, PlanOptions

    dtype = getattr(torch, DTYPES[args.dtype])
    torch.manual_seed(args.seed)
    header = {**info, "figure": "e2e", "model": name, "resolution": res, "batch": batch,
              "compile": args.compile, "dtype": args.dtype, "seed": args.seed,
              "tile": args.tile, "pad": args.pad, "padding": args.padding,
              "dense_layers": args.dense_layers}
    rows: dict[str, dict[str, Any]] = {}
    try:
        model = create(name, res).to(device=device, dtype=dtype).eval()
        images = torch.randn(batch, 3, res, res, device=device, dtype=dtype)
    except Exception as e:  # OOM at build time: every backend of the cell is OOM
        return _write_all(args, header, name, res, batch, [FLOOR, *backends], _failure(e))
    model.attn_ctx.plan_options = PlanOptions(
        tile=args.tile if args.tile == "auto" else _tile(args.tile),
        pad={"auto": "auto", "true": True, "false": False}[args.pad],
        padding=args.padding, dense_layers=args.dense_layers)
    header["params"] = sum(p.numel() for p in model.parameters())
    reference = None
    from tqdm import tqdm

    bar = tqdm([FLOOR, *backends], desc=f"{name} {res}px b{batch}", unit="backend",
               file=sys.stderr, disable=not sys.stderr.isatty())
    for backend in bar:
        row = measure(model, images, backend, args)
        logits = row.pop("_logits", None)
        if logits is not None and backend in EXACT_BACKENDS:
            if reference is None:
                reference = (backend, logits)
                row["reference"] = backend
            else:
                row.update(check_logits(logits, reference, args.dtype))
        rows[backend] = row
        # Written now (a killed cell keeps what it measured), rewritten with the ratios.
        _write(args, {**header, "backend": backend}, name, res, batch, backend, row)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # each backend starts from the same free memory
    _add_ratios(rows)
    for backend, row in rows.items():
        _write(args, {**header, "backend": backend}, name, res, batch, backend, row)
    _print_table(name, res, batch, args.compile, rows)
    return any(r["status"] == "FAIL" for r in rows.values())


def _tile(text: str) -> tuple[int, int]:
    from sparsevit.blocks import parse_tile

    return parse_tile(text)


def measure(model: Any, images: Any, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build (plans, masks, compile) with the first call, then time; never raises."""
    import torch

    from sparsevit import timing
    from sparsevit.baselines import classify

    model.attn_ctx.backend = backend
    model.attn_ctx.plan_seconds = 0.0
    torch._dynamo.reset()
    fn = torch.compile(model, dynamic=False) if args.compile else model
    row: dict[str, Any] = {"backend": backend, "status": "OK"}

    def sync() -> None:
        if images.is_cuda:
            torch.cuda.synchronize(images.device)

    try:
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            logits = model(images)  # builds the stages (plans, masks) eagerly
            if args.compile:  # every stage cached: compiled as one graph, no recompile
                logits = fn(images)
            sync()
            row["first_call_s"] = round(time.perf_counter() - t0, 3)
            row["plan_s"] = round(model.attn_ctx.plan_seconds, 3)
            row["stages"] = _stage_info(model)
            # A model's latency includes its host time: timed call by call.
            row.update(timing.bench(lambda: fn(images), cuda_graph=False))
            if images.is_cuda and (args.profile or backend in PROFILED):
                row["top_kernels"] = top_kernels(lambda: fn(images))
    except Exception as e:  # each backend fails in its own way; the cell goes on
        status, reason = classify(e)
        return {"backend": backend, "status": status, "reason": reason}
    row["_logits"] = logits.float()
    row["images_per_s"] = images.shape[0] / (row["median_us"] * 1e-6)
    return row


def _stage_info(model: Any) -> list[dict[str, Any]]:
    """Per cached attention graph of the current backend: tokens, sparsevit's plan and
    Flex's kernel options (with every tried option's µs)."""
    out = []
    for stage in model.attn_ctx._cache.values():
        if stage.backend != model.attn_ctx.backend:
            continue
        entry = {"graph": stage.spec.kind, "grid": list(stage.spec.grid),
                 "tokens": stage.n_tokens}
        plan = stage.info.get("plan")
        if plan:
            entry.update({k: plan[k] for k in ("tile", "tiles", "full", "partial", "fill",
                                               "positions", "num_warps", "num_stages")
                          if k in plan})
        entry.update({k: stage.info[k] for k in ("flex_kernel_options", "flex_option_us")
                      if k in stage.info})
        out.append(entry)
    return out


def check_logits(logits: Any, reference: tuple[str, Any], dtype: str) -> dict[str, Any]:
    name, ref = reference
    atol, rtol = LOGIT_TOLERANCE[dtype]
    err = (logits - ref).abs()
    worst = float((err / (atol + rtol * ref.abs())).max())
    row = {"reference": name, "logits_max_err": float(err.max()), "logits_err_over_tol": worst}
    if not worst <= 1.0:  # NaN fails too
        row.update(status="FAIL", reason=f"logits {worst:.3g}x the {dtype} tolerance "
                                         f"against {name}")
    return row


def top_kernels(fn: Any, n: int = 12) -> list[dict[str, Any]]:
    """The ``n`` CUDA kernels taking most device time over 3 calls (torch.profiler).

    CUPTI is torn down when the profiler stops: left attached, it taxes every later
    kernel launch, and the backends timed after a profiled one were host-bound and noisy
    (H200, RegionViT-S 2048 px sparsevit eager: 11.09 ms before the floor was profiled,
    11.35-11.86 ms with p80 up to 13.3 after; 11.09 with the teardown)."""
    import os

    import torch
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("TEARDOWN_CUPTI", "1")  # read by Kineto when a session stops
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.device_time_total, reverse=True)[:n]
    return [{"kernel": e.key[:80], "us_per_call": round(e.device_time_total / 3, 1),
             "share": round(e.device_time_total / total, 3)} for e in ranked]


def _add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Floor and sparsevit times into every row, as ratios (> 1: slower than them)."""
    floor = rows.get(FLOOR, {})
    ours = rows.get("sparsevit", {})
    for row in rows.values():
        if "median_us" not in row:
            continue
        if "median_us" in floor:
            row["floor_us"] = floor["median_us"]
            row["x_floor"] = row["median_us"] / floor["median_us"]
        if "median_us" in ours:
            row["sparsevit_us"] = ours["median_us"]
            row["sparsevit_speedup"] = row["median_us"] / ours["median_us"]


def _failure(exc: Exception) -> dict[str, Any]:
    from sparsevit.baselines import classify

    status, reason = classify(exc)
    return {"status": status, "reason": f"model build: {reason}"}


def _write_all(args, header, name, res, batch, backends, row) -> bool:
    for backend in backends:
        _write(args, {**header, "backend": backend}, name, res, batch, backend,
               {"backend": backend, **row})
    return row["status"] == "FAIL"


def _write(args, header, name, res, batch, backend, row) -> None:
    dev = provenance.device_tag(header)
    path = args.out / celllog.cell_name("e2e", dev, model_tag(name), res,
                                        system_tag(backend, batch, args.compile))
    celllog.write(path, header, [row])


def _print_table(name: str, res: int, batch: int, compiled: bool,
                 rows: dict[str, dict[str, Any]]) -> None:
    from tabulate import tabulate

    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"

    table = [[b, r["status"], fmt(r, "median_us", ".0f"),
              f"{fmt(r, 'p20_us', '.0f')}-{fmt(r, 'p80_us', '.0f')}", fmt(r, "x_floor", ".2f"),
              fmt(r, "sparsevit_speedup", ".2f"), fmt(r, "logits_max_err", ".3g"),
              fmt(r, "first_call_s", ".1f"), str(r.get("reason", ""))[:70]]
             for b, r in rows.items()]
    print(f"\n{name} {res}px batch {batch} {'compiled' if compiled else 'eager'}")
    print(tabulate(table, headers=["backend", "status", "median us", "p20-p80 us", "x floor",
                                   "x sparsevit", "logit err", "first call s", "reason"]))
