"""Plain ViT (timm's ``VisionTransformer`` layout: conv patch embedding, cls token,
learned position embedding, pre-norm blocks, LayerNorm, linear head on the cls token),
for any (patch, depth, width), with switchable attention backends.

Its attention graph is dense, so "dense", "full" and "native" are all plain SDPA; the
class is also the DeiT backbone of DynamicViT and the reference ViT-B/16.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch import Tensor, nn

from sparsevit import masks
from sparsevit.errors import SparseVitError
from sparsevit.models.attention import Attend, AttentionContext, GraphSpec

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def to_hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    if len(img_size) != 2:
        raise SparseVitError(f"img_size must be one size or (H, W), got {img_size}")
    return int(img_size[0]), int(img_size[1])


def check_divisible(img_size: tuple[int, int], factor: int, what: str) -> None:
    h, w = img_size
    if h <= 0 or w <= 0 or h % factor or w % factor:
        raise SparseVitError(f"resolution {h}x{w} must be a positive multiple of {factor} "
                             f"({what})")


def check_input(x: Tensor, img_size: tuple[int, int], width: int, tokens: int) -> None:
    """Reject an image of the wrong shape, and a batch whose widest activation (one
    MLP hidden layer, ``width`` per token) cannot fit in the device's memory."""
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != img_size:
        raise SparseVitError(f"model is built for (B, 3, {img_size[0]}, {img_size[1]}) "
                             f"images, got {tuple(x.shape)}")
    need = x.shape[0] * tokens * width * x.element_size()
    have = device_memory(x.device)
    if need > have:
        raise SparseVitError(
            f"batch {x.shape[0]} is too large: one {tokens}-token MLP activation needs "
            f"{need / 2**30:.1f} GiB, the {x.device.type} device has {have / 2**30:.1f} GiB")


# A property of the machine: torch.compile takes it as a constant, not a graph break.
@torch.compiler.assume_constant_result
def device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention whose softmax(QK^T)V is delegated to ``attend``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise SparseVitError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @property
    def head_dim(self) -> int:
        return self.qkv.in_features // self.num_heads

    def forward(self, x: Tensor, attend: Attend) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        # Merged to 2-D, a head-interleaved output with any row stride (the floor's v sits
        # in qkv's rows, 3C apart) goes straight to addmm; a strided 3-D input would take
        # matmul, a copy and a separate bias pass.
        return self.proj(out.transpose(1, 2).reshape(b * n, c)).view(b, n, c)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, attend: Attend) -> Tensor:
        x = x + self.attn(self.norm1(x), attend)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal linears (std .02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT for ``img_size`` images at ``patch_size``; ``attn`` picks the backend
    (sparsevit.models.attention.BACKENDS; switch later with ``model.attn_ctx.backend``)."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, depth: int,
                 embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, attn: str = "dense",
                 num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        if min(patch_size, depth, embed_dim, num_heads) <= 0:
            raise SparseVitError("patch_size, depth, embed_dim and num_heads must be positive")
        self.img_size = to_hw(img_size)
        self.grid = masks.grid_for(self.img_size, patch_size)
        self.embed_dim = embed_dim
        self.mlp_ratio = mlp_ratio
        self.attn_ctx = AttentionContext(attn)
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        n_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    @property
    def n_tokens(self) -> int:
        return 1 + self.grid[0] * self.grid[1]

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + N, C): cls token then patches in raster order."""
        check_input(images, self.img_size, int(self.embed_dim * self.mlp_ratio), self.n_tokens)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def stage_attention(self, x: Tensor, n_tokens: int):
        blk = self.blocks[0].attn
        return self.attn_ctx.get(GraphSpec.dense(n_tokens), x.shape[0], blk.num_heads,
                                 blk.head_dim, x.device, x.dtype)

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.embed(images)
        stage = self.stage_attention(x, x.shape[1])
        for blk in self.blocks:
            x = blk(x, stage.attend)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images)[:, 0])

