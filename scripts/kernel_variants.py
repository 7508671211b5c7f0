"""Ordered-input kernel variants side by side in one run: pointer loads, bulk copies (TMA)
and bulk copies capped at ops.TMA_MAXNREG registers, plus the gathered form, on the model
graphs at fixed launch configs (tile, warps, stages: CONFIGS). Each variant's max
|difference| from the pointer path is printed next to its median µs. Needs a CUDA GPU
(Hopper for the bulk copies).

    python scripts/kernel_variants.py
"""

from __future__ import annotations

import functools

import torch
from tabulate import tabulate

import sparsevit as sv
import sparsevit.ops as ops
from sparsevit import timing
from sparsevit.masks import grid_for

CASES = (("VisionLongformer", 2048), ("VisionLongformer", 1024), ("RegionViT", 2048),
         ("DynamicViT", 2048))
CONFIGS = (("64x64", 4, 1), ("64x64", 4, 2), ("64x64", 4, 3), ("64x32", 4, 2))
VARIANTS = {"pointers": (False, False), "bulk": (True, False), "bulk+maxnreg": (True, True)}


def median_us(fn: functools.partial) -> float:
    return round(timing.bench(fn)["median_us"], 1)


def main() -> None:
    tma_ready, fits_maxnreg = ops._tma_ready, ops._fits_maxnreg
    min_units = ops.TMA_MIN_UNITS, ops.TMA_MAXNREG_MIN_UNITS
    rows = []
    for name, res in CASES:
        grid = (res // 16 // 7 * 7,) * 2 if name == "RegionViT" else grid_for(res, 16)
        graph = sv.masks.MODEL_GRAPHS[name](grid)
        for tile, warps, stages in CONFIGS:
            plan = sv.plan(graph, reorder="auto", tile=tile, heads=12, head_dim=64,
                           device="cuda", num_warps=warps, num_stages=stages)
            q, k, v = (torch.randn(1, 12, plan.n_positions, 64, device="cuda",
                                   dtype=torch.bfloat16) for _ in range(3))
            row = {"graph": name, "tokens": graph.n_tokens, "config": f"{tile}/w{warps}/s{stages}"}
            ref = None
            try:
                for variant, (bulk, capped) in VARIANTS.items():
                    ops._tma_ready = tma_ready if bulk else (lambda *t: False)
                    ops._fits_maxnreg = fits_maxnreg if capped else (lambda *a: False)
                    ops.TMA_MIN_UNITS = ops.TMA_MAXNREG_MIN_UNITS = 0
                    call = functools.partial(sv.attention, q, k, v, plan, ordered=True)
                    out = call()
                    ref = out if ref is None else ref
                    row[f"{variant} us"] = median_us(call)
                    row[f"{variant} max diff"] = float((out.float() - ref.float()).abs().max())
            finally:
                ops._tma_ready, ops._fits_maxnreg = tma_ready, fits_maxnreg
                ops.TMA_MIN_UNITS, ops.TMA_MAXNREG_MIN_UNITS = min_units
            if plan.n_positions == graph.n_tokens:
                qg, kg, vg = (plan.unpermute(t) for t in (q, k, v))
                row["gathered us"] = median_us(functools.partial(sv.attention, qg, kg, vg, plan))
            row["pointers / bulk+maxnreg"] = round(row["pointers us"] / row["bulk+maxnreg us"], 3)
            rows.append(row)
    print(tabulate(rows, headers="keys"))


if __name__ == "__main__":
    main()
