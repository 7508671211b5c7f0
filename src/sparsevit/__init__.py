"""sparsevit: block-sparse attention for high-resolution Vision Transformers.

    import sparsevit as sv
    g = sv.masks.vision_longformer(grid=(128, 128), window=15, n_global=1)
    plan = sv.plan(g, reorder="hilbert", tile=(64, 64), device="cuda")
    out = sv.attention(q, k, v, plan)

Submodules load on first use, so ``import sparsevit`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"masks", "reorder", "blocks", "graph"}
_FUNCTIONS = {"plan": ("sparsevit.planner", "plan"), "attention": ("sparsevit.ops", "attention")}


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"sparsevit.{name}")
    raise AttributeError(f"module 'sparsevit' has no attribute {name!r}")
