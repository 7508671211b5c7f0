"""Time the whole plan, T1-T4, on this CPU: graph, then ``sv.plan(..., schedule=method)``
(reorder, candidate tile layouts, the schedule solve, the chosen layout). Targets
(issue 4): a 16,384-token graph in <= 2 s, a 65,536-token graph in <= 10 s. One small
plan runs first, untimed: the process's one-time imports (scipy.optimize, the solver)
belong to no plan in particular.

    python scripts/bench_schedule.py --profile tests/fixtures/profile_h200.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tabulate import tabulate
from tqdm import tqdm

import sparsevit as sv

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path,
                    default=next(iter(sorted(FIXTURES.glob("profile_*.json"))), None))
    ap.add_argument("--sides", type=int, nargs="+", default=[2048, 4096],
                    help="image sides in px at patch 16 (2048: 16,384 tokens; 4096: 65,536)")
    ap.add_argument("--models", nargs="+", default=list(sv.masks.MODEL_GRAPHS))
    ap.add_argument("--methods", nargs="+", default=["fixed", "greedy", "ilp"])
    ap.add_argument("--reorder", default="hilbert")
    ap.add_argument("--time-limit", type=float, default=1.0)
    args = ap.parse_args()
    warm = sv.masks.MODEL_GRAPHS["VisionLongformer"]((16, 16))
    sv.plan(warm, reorder=args.reorder, device="cpu", schedule=args.methods[0],
            profile=str(args.profile))
    rows = []
    jobs = [(m, s, meth) for m in args.models for s in args.sides for meth in args.methods]
    for model, side, method in tqdm(jobs, unit="plan", disable=None):
        if model == "RegionViT":
            side = side // 112 * 112  # its windows need a multiple of 112 px at patch 16
        t0 = time.perf_counter()
        graph = sv.masks.MODEL_GRAPHS[model](sv.masks.grid_for(side, 16))
        t1 = time.perf_counter()
        plan = sv.plan(graph, reorder=args.reorder, device="cpu", schedule=method,
                       profile=str(args.profile))
        t2 = time.perf_counter()
        rows.append({"model": model, "px": side, "tokens": graph.n_tokens, "method": method,
                     "graph s": t1 - t0, "plan s": t2 - t1, "total s": t2 - t0,
                     "target s": 2 if graph.n_tokens <= 16385 else 10,
                     "config": f"{plan.config['tile']} w{plan.config['num_warps']}",
                     "programs": plan.config["programs"],
                     "predicted us": plan.config["predicted_us"]})
    print(tabulate(rows, headers="keys", floatfmt=".3g"))


if __name__ == "__main__":
    main()
