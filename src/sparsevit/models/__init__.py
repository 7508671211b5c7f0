"""End-to-end sparse ViTs with switchable attention backends (issue 5).

    from sparsevit import models
    net = models.create("RegionViT-S", 2048, attn="sparsevit")   # random init
    net.attn_ctx.backend = "native"                              # switch; same weights

``MODELS`` names every model; ``create(name, img_size, attn, **overrides)`` builds one
for ``img_size`` images (an int or (H, W)), overrides going to its constructor (e.g.
``num_classes``, ``mode="sliding_chunk"`` for ViL, ``depth`` for ViT).
``sparsevit.models.vit.VisionTransformer`` is the generic ViT for any (patch, depth,
width). Backends: sparsevit.models.attention.BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sparsevit.errors import SparseVitError

__all__ = ["MODELS", "create"]


def _vit(**kw: Any):
    from sparsevit.models.vit import VisionTransformer

    return VisionTransformer(**kw)


def _dynamicvit(**kw: Any):
    from sparsevit.models.dynamicvit import DynamicViT

    return DynamicViT(**kw)


def _vil(**kw: Any):
    from sparsevit.models.vil import ViL

    return ViL(**kw)


def _regionvit(**kw: Any):
    from sparsevit.models.regionvit import RegionViT

    return RegionViT(**kw)


# name -> constructor taking img_size, attn and overrides.
MODELS: dict[str, Callable[..., Any]] = {
    "ViT-B/16": partial(_vit, patch_size=16, depth=12, embed_dim=768, num_heads=12),
    "ViL-S": partial(_vil, size="S"),
    "ViL-M": partial(_vil, size="M"),
    "ViL-S-chunk": partial(_vil, size="S", mode="sliding_chunk"),
    "ViL-M-chunk": partial(_vil, size="M", mode="sliding_chunk"),
    "RegionViT-S": partial(_regionvit, size="S"),
    "RegionViT-B": partial(_regionvit, size="B"),
    "DynamicViT-S": partial(_dynamicvit, embed_dim=384, num_heads=6),
    "DynamicViT-B": partial(_dynamicvit, embed_dim=768, num_heads=12),
}


def create(name: str, img_size: int | tuple[int, int], attn: str = "dense", **overrides: Any):
    """Build model ``name`` (random init) for ``img_size`` images with backend ``attn``."""
    if name not in MODELS:
        raise SparseVitError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    try:
        return MODELS[name](img_size=img_size, attn=attn, **overrides)
    except TypeError as e:  # an override the constructor does not take
        raise SparseVitError(f"{name}: {e}") from None
