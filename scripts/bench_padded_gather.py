"""Padded plans in the models' form, side by side in one run: the e2e models keep a padded
plan's unpadded token order and call ``sv.attention`` on it (original-order rows). Each
block's tokens then sit in consecutive rows, so the kernel moves tiles by bulk copies
(``Plan.runs_in_memory``); this times that path against the pointer path it replaced
(rows gathered one by one through the plan's permutation) and against the carried form
(padding rows in memory, ``ordered=True``), on every padded attention graph of the given
models at 2048 px, batch 1, bf16, each at the launch config its model's planner chose.
Prints median µs, the speedup of bulk copies over pointers and each variant's max
|difference| from the pointer path. Needs a CUDA GPU (Hopper for the bulk copies).

    python scripts/bench_padded_gather.py [model ...]   # default: ViL-S/M-chunk, RegionViT-S/B
"""

from __future__ import annotations

import sys
from functools import partial

import torch
from tabulate import tabulate

import sparsevit as sv
from sparsevit import provenance, timing
from sparsevit.models import attention as model_attention
from sparsevit.models import create
from sparsevit.planner import Plan

MODELS = ("ViL-S-chunk", "ViL-M-chunk", "RegionViT-S", "RegionViT-B")
RESOLUTION = 2048


def stage_plans(name: str) -> list[Plan]:
    """The padded plans ``name``'s sparsevit backend builds at RESOLUTION (one forward)."""
    model_attention._PLANS.clear()
    model = create(name, RESOLUTION, attn="sparsevit").to("cuda", torch.bfloat16).eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, RESOLUTION, RESOLUTION, device="cuda", dtype=torch.bfloat16))
    plans = [plan for plan, _ in model_attention._PLANS.values()
             if plan.n_positions != plan.n_tokens]
    del model
    torch.cuda.empty_cache()
    return plans


def time_variants(plan: Plan) -> dict[str, float]:
    n, heads, d = plan.n_tokens, plan.heads, plan.head_dim
    q, k, v = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    carried = [plan.permute(t) for t in (q, k, v)]
    row: dict[str, float] = {}
    outs = {}
    runs = Plan.runs_in_memory
    try:
        Plan.runs_in_memory = property(lambda self: False)
        outs["pointers"] = sv.attention(q, k, v, plan)
        row["pointers us"] = timing.bench(partial(sv.attention, q, k, v, plan))["median_us"]
    finally:
        Plan.runs_in_memory = runs
    outs["bulk"] = sv.attention(q, k, v, plan)
    row["bulk us"] = timing.bench(partial(sv.attention, q, k, v, plan))["median_us"]
    outs["carried"] = plan.unpermute(sv.attention(*carried, plan, ordered=True))
    row["carried us"] = timing.bench(partial(sv.attention, *carried, plan,
                                             ordered=True))["median_us"]
    for name in ("bulk", "carried"):
        row[f"{name} max diff"] = float((outs[name].float() - outs["pointers"].float())
                                        .abs().max())
    row["pointers / bulk"] = row["pointers us"] / row["bulk us"]
    return row


def main(models: list[str]) -> None:
    rows = []
    for name in models:
        for plan in stage_plans(name):
            config = plan.config
            row = {"model": name, "tokens": plan.n_tokens, "positions": plan.n_positions,
                   "heads": plan.heads, "d": plan.head_dim,
                   "config": f"{config['tile']}/w{config['num_warps']}/s{config['num_stages']}",
                   "runs": plan.runs_in_memory, **time_variants(plan)}
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(tabulate(rows[-1:], headers="keys"), flush=True)
    print(tabulate(rows, headers="keys"))
    info = provenance.collect(["scripts/bench_padded_gather.py", *models])
    print({k: info.get(k) for k in ("gpu", "driver", "torch", "triton", "date", "command")})


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
