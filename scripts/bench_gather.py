"""Token reordering side by side in one run: torch's index_select / index_copy_ against
sparsevit's row-copy kernel (``sparsevit.kernels.gather_rows``), on the shapes the models
permute (ViL-S stages at 2048 px, batch 1 and 8; DynamicViT's kept-token rectangle of q/k/v
at 16,385 tokens), with a Hilbert permutation and a random one. Prints median µs, TB/s
(bytes read + written) and the speedup. Needs a CUDA GPU.

    python scripts/bench_gather.py
"""

from __future__ import annotations

from functools import partial

import torch
from tabulate import tabulate

from sparsevit import provenance, reorder, timing
from sparsevit.kernels.gather_rows import gather_rows, scatter_rows

# (label, tensor shape, row dim, side of the square token grid or None, rows selected)
CASES = (("ViL-S stage 1, b1", (1, 262145, 96), 1, 512, None),
         ("ViL-S stage 2, b1", (1, 65537, 192), 1, 256, None),
         ("ViL-S stage 3, b1", (1, 16385, 384), 1, 128, None),
         ("ViL-S stage 1, b8", (8, 262145, 96), 1, 512, None),
         ("DynamicViT q/k/v rows, 12 heads", (1, 12, 16385, 64), 2, None, 5621))


def hilbert_perm(side: int, n: int) -> torch.Tensor:
    """The global token first, then the side x side grid in Hilbert order."""
    import scipy.sparse as sp

    grid_only = sp.eye(side * side, format="csr", dtype=bool)
    order = torch.as_tensor(reorder.get("hilbert")(grid_only, grid=(side, side))) + 1
    return torch.cat([torch.zeros(1, dtype=order.dtype), order])[:n]


def main() -> None:
    rows = []
    for label, shape, dim, side, n_sel in CASES:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        n = shape[dim]
        perms = {"random": torch.randperm(n, device="cuda")}
        if side:
            perms["hilbert"] = hilbert_perm(side, n).cuda()
        for order, perm in perms.items():
            index = perm[:n_sel] if n_sel else perm
            moved = 2 * x.element_size() * x.numel() * index.shape[0] // n
            picked = x.index_select(dim, index)
            assert torch.equal(gather_rows(x, index, dim), picked)
            ops = {"gather": (partial(torch.index_select, x, dim, index),
                              partial(gather_rows, x, index, dim)),
                   "scatter": (partial(x.index_copy_, dim, index, picked),
                               partial(scatter_rows, x, index, picked, dim))}
            for op, (torch_fn, ours_fn) in ops.items():
                t_torch = timing.bench(torch_fn)["median_us"]
                t_ours = timing.bench(ours_fn)["median_us"]
                rows.append({"case": label, "perm": order, "op": op,
                             "torch us": t_torch, "torch TB/s": moved / t_torch / 1e6,
                             "ours us": t_ours, "ours TB/s": moved / t_ours / 1e6,
                             "speedup": t_torch / t_ours})
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    info = provenance.collect(["scripts/bench_gather.py"])
    print({k: info.get(k) for k in ("gpu", "driver", "torch", "triton", "date", "command")})


if __name__ == "__main__":
    main()
