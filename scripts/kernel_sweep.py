"""Time every tile shape x launch config of the block-sparse kernel on the model graphs.

Prints one row per graph (median µs per config, from sv.plan(tile="auto"); the best
config again with pre-permuted inputs, ordered=True) next to dense cuDNN SDPA on the
same (B, H, N, D), measured in the same run. Needs a CUDA GPU.

    python scripts/kernel_sweep.py --resolution 2048 --reorder auto
"""

from __future__ import annotations

import argparse
import functools

import torch
from tabulate import tabulate
from tqdm import tqdm

import sparsevit as sv
from sparsevit import timing
from sparsevit.masks import grid_for


def graphs(resolution: int) -> dict[str, sv.graph.AttentionGraph]:
    return {
        name: build((resolution // 16 // 7 * 7,) * 2 if name == "RegionViT"  # whole windows
                    else grid_for(resolution, 16))
        for name, build in sv.masks.MODEL_GRAPHS.items()
    }


def dense_cudnn_us(n: int, heads: int, head_dim: int) -> float:
    q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))

    def call() -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return timing.bench(call)["median_us"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--reorder", default="auto")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    args = ap.parse_args()
    rows = []
    cases = [(r, name, g) for r in args.resolution for name, g in graphs(r).items()]
    for res, name, g in tqdm(cases, disable=None):
        plan = sv.plan(g, reorder=args.reorder, tile="auto", heads=args.heads,
                       head_dim=args.head_dim, device="cuda")
        dense = dense_cudnn_us(g.n_tokens, args.heads, args.head_dim)
        q, k, v = (plan.permute(torch.randn(1, args.heads, g.n_tokens, args.head_dim,
                                            device="cuda", dtype=torch.bfloat16))
                   for _ in range(3))
        ordered = timing.bench(
            functools.partial(sv.attention, q, k, v, plan, ordered=True))["median_us"]
        best = plan.config
        rows.append({"graph": name, "res": res, "tokens": g.n_tokens,
                     "best": f"{best['tile']}/w{best['num_warps']}/s{best['num_stages']}",
                     "best_us": best["us"], "ordered_us": ordered, "cudnn_dense_us": dense,
                     "speedup_vs_dense": dense / best["us"], "fill": plan.tiles.stats()["fill"],
                     "all_us": " ".join(f"{k}={v}" for k, v in best["tuned_us"].items())})
    print(tabulate(rows, headers="keys", floatfmt=".3g"))


if __name__ == "__main__":
    main()
