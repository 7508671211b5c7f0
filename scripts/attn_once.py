"""Run the block-sparse kernel on one model graph with one fixed config: a target for
Nsight Compute (``scripts/ncu_attn.sh``) or a quick check of a single config. Prints
the plan's tile stats and the launch's median µs (``timing.bench``: L2 flushed, CUDA
graph replays).

    python scripts/attn_once.py --model VisionLongformer --resolution 2048 --tile 64x64
"""

from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

import sparsevit as sv
from sparsevit import timing
from sparsevit.masks import grid_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="VisionLongformer", choices=list(sv.masks.MODEL_GRAPHS))
    ap.add_argument("--resolution", type=int, default=2048)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--reorder", default="hilbert")
    ap.add_argument("--tile", default="64x64")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--gathered", action="store_true",
                    help="original token order (gather through the permutation), not ordered")
    args = ap.parse_args()
    graph = sv.masks.MODEL_GRAPHS[args.model](grid_for(args.resolution, args.patch))
    plan = sv.plan(graph, reorder=args.reorder, tile=args.tile, heads=args.heads,
                   head_dim=args.head_dim, num_warps=args.warps, num_stages=args.stages,
                   device="cuda")
    n = graph.n_tokens if args.gathered else plan.n_positions
    q, k, v = (torch.randn(1, args.heads, n, args.head_dim, device="cuda",
                           dtype=torch.bfloat16) for _ in range(3))
    us = timing.bench(lambda: sv.attention(q, k, v, plan, ordered=not args.gathered))["median_us"]
    print(tabulate([{"graph": args.model, "tokens": graph.n_tokens, **plan.tiles.stats(),
                     "config": f"{args.tile}/w{args.warps}/s{args.stages}",
                     "form": "gathered" if args.gathered else "ordered", "us": us}],
                   headers="keys", floatfmt=".4g"))


if __name__ == "__main__":
    main()
