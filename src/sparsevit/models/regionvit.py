"""RegionViT (Chen et al., ICLR 2022; IBM/RegionViT), the S and B configurations.

Local tokens come from a patch-4 stem (S: three 3x3 convs, B: one 8x8 conv), regional
tokens from a patch-28 conv on the image (zero-padded, centred, to a multiple of 28), so
each regional token owns a 7 x 7 window of local tokens; windows at a ragged border
are smaller, as the released code's padding mask makes them. Four stages; stages 2-4
start with a shared depthwise 3x3 stride-2 conv on both token sets. Each R2L block:
regional self-attention (dense over the regional tokens), then local attention of each
window's 49 local tokens plus its regional token (the graph sparsevit.masks.regionvit
builds), then the MLP; both attentions share one q/k/v/out projection, as released.
The head averages the normalised regional tokens.

Deviation: no relative position bias inside windows (sparsevit's kernel takes no bias).

Token layout of a stage: regional tokens then local tokens in raster order (the T1
graph's order). ``sparsevit``/``flex`` put them window after window (each regional
token right before its window) once per stage; ``native`` uses the released code's
flattened layout, windows padded to 7 x 7 (padding slots are zero tokens masked out as
keys) and attention batched per window.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from sparsevit.errors import SparseVitError
from sparsevit.models.attention import AttentionContext, GraphSpec, StageAttention
from sparsevit.models.vit import (
    Attention,
    LayerNorm,
    Mlp,
    check_divisible,
    check_input,
    init_weights,
    to_hw,
)

LOCAL_PATCH = 4
WINDOW = 7
CONFIGS = {  # IBM/RegionViT _model_cfg 'small' and 'base'
    "S": {"dims": (96, 96, 192, 384, 768), "heads": (3, 6, 12, 24), "depths": (2, 2, 8, 2),
          "stem": "3conv"},
    "B": {"dims": (128, 128, 256, 512, 1024), "heads": (4, 8, 16, 32),
          "depths": (2, 2, 14, 2), "stem": "1conv"},
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def local_stem(kind: str, dim: int) -> nn.Module:
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(3, dim // 4, 3, stride=2, padding=1), LayerNorm2d(dim // 4), nn.GELU(),
            nn.Conv2d(dim // 4, dim // 2, 3, stride=2, padding=1), LayerNorm2d(dim // 2),
            nn.GELU(), nn.Conv2d(dim // 2, dim, 3, stride=1, padding=1))
    return nn.Conv2d(3, dim, 2 * LOCAL_PATCH, stride=LOCAL_PATCH, padding=LOCAL_PATCH - 1)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise conv that runs torch's own depthwise kernel on CUDA. Handed the
    channels-last input that LayerNorm2d leaves, torch sends a bf16 depthwise conv to
    cuDNN, whose generic NHWC engine took 9.2 ms of a 22 ms RegionViT-B 2048 px forward
    on an H200, one launch per channel (1,344 launches per RegionViT-S forward); under
    torch.compile Inductor turns a contiguous input back to channels-last for the conv.
    Calling the depthwise op by name (an NCHW-contiguous input) pins the one-launch
    kernel in both modes. Same weights and state_dict keys as nn.Conv2d."""

    def __init__(self, channels: int, out_channels: int, kernel: int, stride: int,
                 padding: int) -> None:
        super().__init__(channels, out_channels, kernel, stride=stride, padding=padding,
                         groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_cuda:
            return super().forward(x)
        return torch.ops.aten._conv_depthwise2d(x.contiguous(), self.weight, self.kernel_size,
                                                self.bias, self.stride, self.padding,
                                                self.dilation)


class R2LBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm0 = LayerNorm(dim)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, regional: Tensor, reg_stage: StageAttention,
                loc_stage: StageAttention) -> Tensor:
        r = x.index_select(1, regional)
        r = r + self.attn(self.norm0(r), reg_stage.attend)
        x = x.index_copy(1, regional, r)
        x = x + self.attn(self.norm1(x), loc_stage.attend)
        return x + self.mlp(self.norm2(x))


class RegionStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        # 'c' (stage 1, same width): identity; 'sc': LN, GELU, depthwise 3x3 stride 2.
        self.downsample = nn.Identity() if in_dim == dim else nn.Sequential(
            LayerNorm2d(in_dim), nn.GELU(),
            DepthwiseConv2d(in_dim, dim, 3, stride=2, padding=1))
        self.blocks = nn.ModuleList(R2LBlock(dim, heads) for _ in range(depth))


class RegionViT(nn.Module):
    def __init__(self, img_size, size: str = "S", attn: str = "dense",
                 num_classes: int = 1000) -> None:
        super().__init__()
        if size not in CONFIGS:
            raise SparseVitError(f"unknown RegionViT size {size!r} ({', '.join(CONFIGS)})")
        self.img_size = to_hw(img_size)
        check_divisible(self.img_size, LOCAL_PATCH * 8, "local patch 4, three 2x downsamplings")
        cfg = CONFIGS[size]
        dims = cfg["dims"]
        self.width = dims[1]
        self.attn_ctx = AttentionContext(attn, natives={"regionvit": window_native})
        self.patch_embed = local_stem(cfg["stem"], dims[0])
        self.regional_embed = nn.Conv2d(3, dims[0], LOCAL_PATCH * WINDOW,
                                        stride=LOCAL_PATCH * WINDOW)
        self.stages = nn.ModuleList(
            RegionStage(dims[i], dims[i + 1], cfg["heads"][i], cfg["depths"][i])
            for i in range(4))
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(init_weights)
        h, w = (s // LOCAL_PATCH for s in self.img_size)
        self.grids = [(h >> i, w >> i) for i in range(4)]

    def regional_tokens(self, images: Tensor) -> Tensor:
        """Patch-28 tokens of the image zero-padded (centred) to a multiple of 28."""
        size = LOCAL_PATCH * WINDOW
        pads = [(-s) % size for s in images.shape[-2:]]
        images = functional.pad(images, (pads[1] // 2, pads[1] - pads[1] // 2,
                                pads[0] // 2, pads[0] - pads[0] // 2))
        return self.regional_embed(images)

    def forward(self, images: Tensor) -> Tensor:
        check_input(images, self.img_size, 4 * self.width, self.grids[0][0] * self.grids[0][1])
        local = self.patch_embed(images)
        regional = self.regional_tokens(images)
        for stage, grid in zip(self.stages, self.grids, strict=True):
            regional, local = stage.downsample(regional), stage.downsample(local)
            regional, local = self.run_stage(stage, grid, regional, local)
        r = self.norm(regional.flatten(2).transpose(1, 2))
        return self.head(r.mean(dim=1))

    def run_stage(self, stage: RegionStage, grid: tuple[int, int], regional: Tensor,
                  local: Tensor) -> tuple[Tensor, Tensor]:
        b, c, rh, rw = regional.shape
        if (rh, rw) != (math.ceil(grid[0] / WINDOW), math.ceil(grid[1] / WINDOW)):
            raise SparseVitError(f"regional grid {rh}x{rw} does not cover local grid {grid}")
        x = torch.cat([regional.flatten(2), local.flatten(2)], dim=2).transpose(1, 2)
        attn = stage.blocks[0].attn

        def get(spec: GraphSpec) -> StageAttention:
            return self.attn_ctx.get(spec, b, attn.num_heads, attn.head_dim, x.device, x.dtype)

        loc_stage = get(GraphSpec("regionvit", grid, (("window", WINDOW),)))
        reg_stage = get(GraphSpec.dense(rh * rw))
        slots = loc_stage.positions(torch.arange(rh * rw, device=x.device))
        x = loc_stage.to_layout(x)
        for blk in stage.blocks:
            x = blk(x, slots, reg_stage, loc_stage)
        x = loc_stage.from_layout(x).transpose(1, 2)
        return (x[:, :, :rh * rw].reshape(b, c, rh, rw),
                x[:, :, rh * rw:].reshape(b, c, *grid))


# ------------------------------------------------------------------------- native


def window_slots(spec: GraphSpec) -> np.ndarray:
    """(windows, 1 + window^2) original token per slot of the released flattened layout:
    the regional token, then its window's local tokens in raster order; slots past a
    ragged border hold ``n_tokens`` (a zero padding token)."""
    h, w = spec.grid
    ws = spec.param("window")
    rh, rw = math.ceil(h / ws), math.ceil(w / ws)
    n_reg = rh * rw
    ry, rx = np.divmod(np.arange(n_reg), rw)
    dy, dx = np.divmod(np.arange(ws * ws), ws)
    y = ry[:, None] * ws + dy[None, :]
    x = rx[:, None] * ws + dx[None, :]
    local = np.where((y < h) & (x < w), n_reg + y * w + x, n_reg + h * w)
    return np.concatenate([np.arange(n_reg)[:, None], local], axis=1)


def window_native(spec: GraphSpec, device: torch.device) -> StageAttention:
    """Windows as a batch: one SDPA call over (B * windows, heads, 50, D)."""
    slots = window_slots(spec)
    n_win, size = slots.shape
    n = int(slots[:, 0].shape[0] + spec.grid[0] * spec.grid[1])
    valid = slots < n
    gather = torch.as_tensor(slots.reshape(-1), device=device)
    scatter = torch.empty(n, dtype=torch.int64, device=device)
    scatter[gather[torch.as_tensor(valid.reshape(-1), device=device)]] = torch.as_tensor(
        np.flatnonzero(valid.reshape(-1)), device=device)
    key_mask = None if valid.all() else torch.as_tensor(valid, device=device)[:, None, None]

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, heads, _, d = q.shape
        qw, kw, vw = (t.reshape(b, heads, n_win, size, d).transpose(1, 2).reshape(
            b * n_win, heads, size, d) for t in (q, k, v))
        mask = None if key_mask is None else key_mask.repeat(b, 1, 1, 1)
        out = functional.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)
        return out.reshape(b, n_win, heads, size, d).transpose(1, 2).reshape(b, heads, -1, d)

    return StageAttention(spec, "native", n, attend, gather, scatter)

