"""Multi-scale Vision Longformer (ViL, Zhang et al. 2021; microsoft/vision-longformer MsViT).

Four stages, each a patch embedding (conv, patch 4 / 2 / 2 / 2, LayerNorm), one global
token, factorised absolute 2-D position embedding (the released "a1" models) and pre-norm
blocks whose attention is the Vision Longformer graph of sparsevit.masks: every local
token sees the global token and a 15 x 15 window (``mode="exact"``, MsViT SW_EXACT=1) or
its 7 x 7 chunk and the 8 around it (``mode="sliding_chunk"``); the global token sees
everything. The head reads the last stage's global token.

Deviations from the released code, forced by one attention graph per layer: global and
local tokens share their q/k/v/out projections (MsViT's ``sharew=True`` option), every
stage (also the last) uses the sparse graph with a global token (as the high-resolution
detection configs do), and there is no relative position bias (sparsevit's kernel takes
no bias; the absolute-embedding models are the released alternative).

Reordering under flex/sparsevit: a patch merge needs the 2-D raster layout, so tokens
are put in plan order once per stage, right after its patch embedding, and back to
raster order once at its end; all blocks of a stage run in plan order.

``native`` is MsViT's own sliding-chunk algorithm: the grid is cut into 7 x 7 chunks
(zero-padded), each chunk's queries attend to the 21 x 21 keys of its 3 x 3 chunk
neighbourhood plus the global keys, masked to the window (exact) or to the grid
(sliding chunk), as one batched SDPA call; global queries attend to all keys.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from sparsevit.errors import SparseVitError
from sparsevit.models.attention import AttentionContext, GraphSpec, StageAttention
from sparsevit.models.vit import Block, LayerNorm, check_divisible, check_input, init_weights, to_hw

PATCHES = (4, 2, 2, 2)
CONFIGS = {  # Vision Longformer README, "main model architectures"
    "S": {"dims": (96, 192, 384, 768), "heads": (3, 3, 6, 12), "depths": (1, 2, 8, 1)},
    "M": {"dims": (96, 192, 384, 768), "heads": (3, 3, 6, 12), "depths": (1, 4, 16, 1)},
}
CHUNK = 7  # MsViT's one-sided window f = 7: exact window 2f + 1 = 15, chunks of f x f


class ViLStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, heads: int, depth: int, patch: int,
                 grid: tuple[int, int], n_global: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, patch, stride=patch)
        self.norm_embed = LayerNorm(dim)
        self.n_global = n_global
        self.cls_token = nn.Parameter(torch.zeros(1, n_global, dim))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, n_global, dim))
        self.x_pos_embed = nn.Parameter(torch.zeros(1, grid[0], dim // 2))
        self.y_pos_embed = nn.Parameter(torch.zeros(1, grid[1], dim - dim // 2))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        for p in (self.cls_token, self.cls_pos_embed, self.x_pos_embed, self.y_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, n_global + h * w, C): global tokens, then raster order."""
        x = self.proj(x)
        b, _, h, w = x.shape
        tokens = self.norm_embed(x.flatten(2).transpose(1, 2))
        pos = torch.cat([self.x_pos_embed[:, :, None].expand(-1, -1, w, -1),
                         self.y_pos_embed[:, None].expand(-1, h, -1, -1)], dim=-1)
        tokens = tokens + pos.flatten(1, 2)
        glob = (self.cls_token + self.cls_pos_embed).expand(b, -1, -1)
        return torch.cat([glob, tokens], dim=1)


class ViL(nn.Module):
    def __init__(self, img_size, size: str = "S", mode: str = "exact", attn: str = "dense",
                 n_global: int = 1, window: int = 15, num_classes: int = 1000) -> None:
        super().__init__()
        if size not in CONFIGS:
            raise SparseVitError(f"unknown ViL size {size!r} ({', '.join(CONFIGS)})")
        if mode not in ("exact", "sliding_chunk"):
            raise SparseVitError(f"ViL mode must be exact or sliding_chunk, got {mode!r}")
        if n_global < 1:
            raise SparseVitError("ViL needs at least one global token (its head reads it)")
        self.img_size = to_hw(img_size)
        check_divisible(self.img_size, math.prod(PATCHES), "ViL patches 4 x 2 x 2 x 2")
        cfg = CONFIGS[size]
        self.mode, self.window, self.n_global = mode, window, n_global
        self.attn_ctx = AttentionContext(attn, natives={"vil": vil_native})
        self.grids = []
        h, w = self.img_size
        stages, in_dim = [], 3
        for patch, dim, heads, depth in zip(PATCHES, cfg["dims"], cfg["heads"], cfg["depths"],
                                            strict=True):
            h, w = h // patch, w // patch
            self.grids.append((h, w))
            stages.append(ViLStage(in_dim, dim, heads, depth, patch, (h, w), n_global))
            in_dim = dim
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNorm(in_dim)
        self.head = nn.Linear(in_dim, num_classes)
        self.apply(init_weights)

    def graph_spec(self, grid: tuple[int, int]) -> GraphSpec:
        return GraphSpec("vil", grid, (("window", self.window), ("n_global", self.n_global),
                                       ("mode", self.mode), ("chunk", CHUNK)))

    def forward(self, images: Tensor) -> Tensor:
        dims = [s.norm_embed.normalized_shape[0] for s in self.stages]
        check_input(images, self.img_size, 4 * dims[0], self.grids[0][0] * self.grids[0][1])
        x = images
        for stage, grid in zip(self.stages, self.grids, strict=True):
            tokens = stage.embed(x)
            attn = stage.blocks[0].attn
            st = self.attn_ctx.get(self.graph_spec(grid), tokens.shape[0], attn.num_heads,
                                   attn.head_dim, tokens.device, tokens.dtype)
            tokens = st.to_layout(tokens)
            for blk in stage.blocks:
                tokens = blk(tokens, st.attend)
            tokens = st.from_layout(tokens)
            x = tokens[:, self.n_global:].transpose(1, 2).reshape(
                tokens.shape[0], -1, *grid)
        return self.head(self.norm(tokens[:, 0]))


# ------------------------------------------------------------------------- native


def chunk_mask(spec: GraphSpec) -> np.ndarray:
    """(chunks, 49, n_global + 441) bool: which keys of its 3 x 3 chunk neighbourhood
    (21 x 21, raster) each query of a chunk attends to, global keys first."""
    h, w = spec.grid
    c = spec.param("chunk")
    n_global, mode, radius = spec.param("n_global"), spec.param("mode"), spec.param("window") // 2
    my, mx = -(-h // c), -(-w // c)
    cy, cx = np.divmod(np.arange(my * mx), mx)
    qy, qx = np.divmod(np.arange(c * c), c)
    ky, kx = np.divmod(np.arange(9 * c * c), 3 * c)
    key_y = (cy[:, None, None] - 1) * c + ky[None, None, :]
    key_x = (cx[:, None, None] - 1) * c + kx[None, None, :]
    ok = (key_y >= 0) & (key_y < h) & (key_x >= 0) & (key_x < w)
    if mode == "exact":
        q_y = cy[:, None, None] * c + qy[None, :, None]
        q_x = cx[:, None, None] * c + qx[None, :, None]
        ok = ok & (np.abs(key_y - q_y) <= radius) & (np.abs(key_x - q_x) <= radius)
    else:
        ok = np.broadcast_to(ok, (my * mx, c * c, 9 * c * c))
    glob = np.ones((my * mx, c * c, n_global), dtype=bool)
    return np.concatenate([glob, ok], axis=2)


def vil_native(spec: GraphSpec, device: torch.device) -> StageAttention:
    """MsViT's chunked local attention plus dense global rows (see the module doc)."""
    h, w = spec.grid
    c, g = spec.param("chunk"), spec.param("n_global")
    if spec.param("mode") == "exact" and spec.param("window") != 2 * c + 1:
        raise SparseVitError(f"the chunked path needs window = 2 * {c} + 1")
    my, mx = -(-h // c), -(-w // c)
    mask = torch.as_tensor(chunk_mask(spec), device=device)[None]

    def chunks(t: Tensor, pad: int) -> Tensor:
        """(BH, h, w, D) -> (BH, chunks, (c + 2 pad)^2, D): each chunk with ``pad`` more."""
        t = functional.pad(t, (0, 0, pad, mx * c - w + pad, pad, my * c - h + pad))
        size = c + 2 * pad
        t = t.unfold(1, size, c).unfold(2, size, c)  # (BH, my, mx, D, size, size)
        return t.permute(0, 1, 2, 4, 5, 3).reshape(t.shape[0], my * mx, size * size, -1)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, heads, _, d = q.shape
        grid_of = [t[:, :, g:].reshape(b * heads, h, w, d) for t in (q, k, v)]
        qc = chunks(grid_of[0], 0)
        kc, vc = (torch.cat([t[:, :, :g].reshape(b * heads, 1, g, d).expand(
            -1, my * mx, -1, -1), chunks(tg, c)], dim=2) for t, tg in zip(
            (k, v), grid_of[1:], strict=True))
        local = functional.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)
        local = local.reshape(b * heads, my, mx, c, c, d).permute(0, 1, 3, 2, 4, 5)
        local = local.reshape(b, heads, my * c, mx * c, d)[:, :, :h, :w].reshape(b, heads, -1, d)
        glob = functional.scaled_dot_product_attention(q[:, :, :g], k, v)
        return torch.cat([glob, local], dim=2)

    return StageAttention(spec, "native", g + h * w, attend)

