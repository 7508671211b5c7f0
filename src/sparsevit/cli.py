"""The ``sparsevit`` command: one subcommand per pipeline stage.

Bad input ends with one line on stderr and exit code 2, never a traceback, and no
output file is left behind (every file is written atomically).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from sparsevit import masks
from sparsevit.errors import SparseVitError

# Subcommands living in their own modules; each exposes register(subparsers).
COMMAND_MODULES = ("sparsevit.reorder_study", "sparsevit.bench_attn", "sparsevit.kit.runner",
                   "sparsevit.kit.check", "sparsevit.kit.env_check",
                   "sparsevit.characterize.cli", "sparsevit.bench_e2e",
                   "sparsevit.profile", "sparsevit.schedule", "sparsevit.schedule.study")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise SparseVitError(f"{self.prog}: {message}")


def parse_resolution(text: str) -> tuple[int, int]:
    """'2048' -> (2048, 2048); '1280x720' (width x height) -> (720, 1280) as (H, W)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SparseVitError(f"resolution must look like 2048 or 1280x720, got {text!r}")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[1]), int(parts[0])


def parse_grid(text: str) -> tuple[int, int]:
    """'45x80' -> (45, 80) token rows x cols."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SparseVitError(f"--grid must look like 45x80 (rows x cols), got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """['tau=0.5', 'metric=jaccard'] -> {'tau': 0.5, 'metric': 'jaccard'}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SparseVitError(f"--param must look like name=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_graph(args: argparse.Namespace):
    """The graph named by --model/--resolution/--patch (or --input) and pattern options."""
    if args.input:
        return masks.load(args.input)
    if not args.model:
        raise SparseVitError("give --model or --input")
    grid = masks.grid_for(parse_resolution(args.resolution), args.patch)
    window = args.window
    if args.model == "VisionLongformer":
        return masks.vision_longformer(grid, window=15 if window is None else window,
                                       n_global=args.n_global, mode=args.mode)
    if args.model == "RegionViT":
        return masks.regionvit(grid, window=7 if window is None else window, step=args.step)
    return masks.dynamicvit(grid, keep=args.keep, seed=args.seed)


def add_graph_args(p: argparse.ArgumentParser) -> None:
    """Options that choose a graph; shared by every command that builds one."""
    p.add_argument("--model", choices=tuple(masks.MODEL_GRAPHS))
    p.add_argument("--input", help="user mask (.npz/.npy/.pt) instead of --model")
    p.add_argument("--resolution", default="2048", help="pixels: 2048 or WIDTHxHEIGHT")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--window", type=int, help="VL exact window (15) / RegionViT window (7)")
    p.add_argument("--n-global", type=int, default=1, help="Vision Longformer global tokens")
    p.add_argument("--mode", default="exact", choices=("exact", "sliding_chunk"))
    p.add_argument("--step", default="local", choices=("local", "regional"), help="RegionViT")
    p.add_argument("--keep", type=float, default=0.343, help="DynamicViT keep ratio")
    p.add_argument("--seed", type=int, default=0, help="DynamicViT keep score seed")


def _print_table(row: dict[str, Any]) -> None:
    print(tabulate([row], headers="keys", floatfmt=".4g"))


def cmd_gen_adj(args: argparse.Namespace) -> int:
    from sparsevit import graph as graph_mod

    t0 = time.perf_counter()
    g = build_graph(args)
    elapsed = time.perf_counter() - t0
    graph_mod.save(g, args.output)
    _print_table({**g.summary(), "time_s": elapsed, "output": args.output})
    return 0


def cmd_reorder(args: argparse.Namespace) -> int:
    from sparsevit import blocks, graph, reorder

    g = masks.load(args.input)
    method = reorder.get(args.method)
    params = parse_params(args.param)
    if args.grid:
        if "grid" not in inspect.signature(method).parameters:
            raise SparseVitError(f"--grid applies to hilbert, morton and tiled, not {args.method}")
        params["grid"] = parse_grid(args.grid)
    t0 = time.perf_counter()
    try:
        perm = method(g, **params)
    except TypeError as e:  # an unknown --param name
        raise SparseVitError(f"reorder {args.method}: {e}") from None
    elapsed = time.perf_counter() - t0
    out = reorder.apply(g, perm)
    graph.save(out, args.output)
    tile = blocks.parse_tile(args.tile)
    before = blocks.extract_tiles(g.adjacency, tile).stats()
    after = blocks.extract_tiles(out.adjacency, tile).stats()
    _print_table({"method": args.method, "tokens": g.n_tokens, "nnz": out.nnz,
                  "time_s": elapsed, "tile": after["tile"], "tiles_before": before["tiles"],
                  "tiles_after": after["tiles"], "fill_before": before["fill"],
                  "fill_after": after["fill"], "output": args.output})
    return 0


def cmd_extract_blocks(args: argparse.Namespace) -> int:
    from sparsevit import atomic, blocks

    g = masks.load(args.input)
    t0 = time.perf_counter()
    if args.greedy:
        found = blocks.grow_blocks(g.adjacency, rho_min=args.rho_min, cap=args.cap)
        elapsed = time.perf_counter() - t0
        stats = blocks.blocks_stats(found, g.nnz)
        doc = {"method": "greedy", "rho_min": args.rho_min, "cap": args.cap,
               "n_tokens": g.n_tokens, "stats": stats,
               "blocks": [vars(b) for b in found]}
    else:
        tiles = blocks.extract_tiles(g.adjacency, args.tile)
        elapsed = time.perf_counter() - t0
        stats = tiles.stats()
        doc = {"method": "tiles", "n_tokens": g.n_tokens, "bm": tiles.bm, "bn": tiles.bn,
               "stats": stats, "row_ptr": tiles.row_ptr.tolist(),
               "col_block": tiles.col_block.tolist(), "nnz": tiles.nnz.tolist(),
               "full": tiles.full.tolist(), "mask_id": tiles.mask_id.tolist(),
               "bitmasks": tiles.bitmasks.tolist()}
    atomic.write_text(args.output, json.dumps(doc, default=_json_default))
    _print_table({"tokens": g.n_tokens, "nnz": g.nnz, **stats, "time_s": elapsed,
                  "output": args.output})
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsevit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("gen-adj", help="T1: build an attention graph (.npz)")
    add_graph_args(p)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_gen_adj)

    p = sub.add_parser("reorder", help="T2: reorder tokens of a graph")
    p.add_argument("--method", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--grid", help="HxW token grid for a bare matrix (geometry orders)")
    p.add_argument("--param", action="append", default=[], help="method parameter name=value")
    p.add_argument("--tile", default="64x64", help="tile used for the before/after summary")
    p.set_defaults(func=cmd_reorder)

    p = sub.add_parser("extract-blocks", help="T2: tiles (or greedy dense blocks) of a graph")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tile", default="64x64")
    p.add_argument("--greedy", action="store_true", help="seed 000's nearly-dense block growing")
    p.add_argument("--rho-min", type=float, default=0.6)
    p.add_argument("--cap", type=int, default=1024)
    p.set_defaults(func=cmd_extract_blocks)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "output", None) and not str(args.output).strip():
            raise SparseVitError("--output is empty")
        return int(args.func(args) or 0)
    except SparseVitError as e:
        print(f"sparsevit: error: {e}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        print(f"sparsevit: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsevit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

