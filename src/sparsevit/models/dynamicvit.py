"""DynamicViT (Rao et al., NeurIPS 2021) on DeiT-S / DeiT-B, inference path.

Before blocks 4, 7 and 10 (indices 3, 6, 9) a prediction module (PredictorLG: local
features concatenated with a policy-weighted global mean, MLP to keep/drop log-probs)
scores the patch tokens; the top ``int(N * rho^s)`` stay (rho = 0.7, as in
raoyongming/DynamicViT ``num_keep_node``); the cls token always stays.

The keep decision depends on the input, so the backends take two honest routes:

- gather (``native``, ``sparsevit``, ``floor``): the released inference code's route;
  kept tokens are gathered and attention over them is dense. Under ``sparsevit`` that
  dense attention runs SDPA by default (PlanOptions.dense_layers). A per-input
  sparsevit plan of the policy graph instead would cost a CPU T2 pass per image and
  pruning stage: 60 s at 16,385 tokens (graph 8 s + plan 52 s, one CPU core,
  measured) against a 9 ms forward pass;
- mask (``dense``, ``flex``, ``full``): every token is carried and attention is masked
  with the policy graph of sparsevit.masks.dynamicvit (kept tokens attend to kept
  tokens, a dropped token to itself), rebuilt per input (Flex: create_block_mask per
  pruning stage). ``full`` drops the mask (dense DeiT cost).

Both routes give the same logits: kept tokens never see dropped ones, token-wise layers
ignore the rest, and the head reads the cls token.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from sparsevit.baselines import NotSupportedError
from sparsevit.masks import DYNAMICVIT_KEEP
from sparsevit.models.attention import (
    DENSE_MASK_MAX_TOKENS,
    Attend,
    flex_for,
)
from sparsevit.models.vit import VisionTransformer

GATHER_BACKENDS = ("native", "sparsevit", "floor")
PRUNE_BEFORE = tuple(block - 1 for block in DYNAMICVIT_KEEP)  # 0-based block indices
KEEP_RATIOS = tuple(DYNAMICVIT_KEEP.values())


class PredictorLG(nn.Module):
    """Token scorer: (B, N, C) tokens and (B, N, 1) policy -> (B, N, 2) log-probs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x: Tensor, policy: Tensor) -> Tensor:
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        pooled = (x[..., half:] * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True)
        return self.out_conv(torch.cat([x[..., :half], pooled.expand(-1, x.shape[1], -1)], -1))


class DynamicViT(VisionTransformer):
    def __init__(self, img_size, patch_size: int = 16, depth: int = 12, embed_dim: int = 384,
                 num_heads: int = 6, mlp_ratio: float = 4.0, attn: str = "dense",
                 num_classes: int = 1000, keep_ratios: tuple[float, ...] = KEEP_RATIOS,
                 prune_before: tuple[int, ...] = PRUNE_BEFORE) -> None:
        super().__init__(img_size, patch_size, depth, embed_dim, num_heads, mlp_ratio, attn,
                         num_classes)
        self.keep_ratios = tuple(keep_ratios)
        self.prune_before = tuple(prune_before)
        self.score_predictor = nn.ModuleList(PredictorLG(embed_dim) for _ in keep_ratios)
        self.score_predictor.apply(_init_predictor)

    def kept_counts(self) -> list[int]:
        n = self.grid[0] * self.grid[1]
        return [max(1, int(n * r)) for r in self.keep_ratios]

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.embed(images)
        gather = self.attn_ctx.backend in GATHER_BACKENDS
        attend = self.stage_attention(x, x.shape[1]).attend
        kept = torch.ones(x.shape[0], x.shape[1] - 1, dtype=torch.bool, device=x.device)
        stage = 0
        for i, blk in enumerate(self.blocks):
            if i in self.prune_before:
                n_keep = self.kept_counts()[stage]
                predictor = self.score_predictor[stage]
                stage += 1
                if gather:
                    x = _gather_kept(x, predictor, n_keep)
                    attend = self.stage_attention(x, x.shape[1]).attend
                else:
                    kept = _mask_kept(x, predictor, n_keep, kept)
                    attend = self.policy_attention(kept)
            x = blk(x, attend)
        return self.norm(x)

    def policy_attention(self, kept: Tensor) -> Attend:
        """Attention of the policy graph for the mask route (built per input)."""
        backend = self.attn_ctx.backend
        if backend == "full":
            return torch.nn.functional.scaled_dot_product_attention
        keep_all = torch.cat([kept.new_ones(kept.shape[0], 1), kept], dim=1)
        n = keep_all.shape[1]
        if backend == "dense":
            if n > DENSE_MASK_MAX_TOKENS:
                raise NotSupportedError(f"SDPA with a {n}-token boolean mask reads wrong rows "
                                        f"beyond {DENSE_MASK_MAX_TOKENS} tokens (pytorch#187227)")
            return _sdpa_with(policy_mask(keep_all))
        return _flex_policy(keep_all)


def policy_mask(keep_all: Tensor) -> Tensor:
    """(B, 1, N, N) bool: kept tokens attend to kept tokens, every token to itself
    (the graph of sparsevit.masks.dynamicvit for each sample's keep decision)."""
    eye = torch.eye(keep_all.shape[1], dtype=torch.bool, device=keep_all.device)
    return ((keep_all[:, :, None] & keep_all[:, None, :]) | eye)[:, None]


def _sdpa_with(mask: Tensor) -> Attend:
    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return attend


def _flex_policy(keep_all: Tensor) -> Attend:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (keep_all[b, q_idx] & keep_all[b, kv_idx]) | (q_idx == kv_idx)

    n = keep_all.shape[1]
    make = _compiled_create_block_mask() if keep_all.is_cuda else create_block_mask
    block_mask = make(mask_mod, keep_all.shape[0], None, n, n, device=keep_all.device)
    flex = flex_for(keep_all.device)
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask)


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def _gather_kept(x: Tensor, predictor: PredictorLG, n_keep: int) -> Tensor:
    """Keep the cls token and the ``n_keep`` best-scored patch tokens (score order)."""
    spatial = x[:, 1:]
    policy = spatial.new_ones(spatial.shape[0], spatial.shape[1], 1)
    keep = predictor(spatial, policy)[..., 0].topk(n_keep, dim=1).indices
    picked = spatial.gather(1, keep[..., None].expand(-1, -1, spatial.shape[2]))
    return torch.cat([x[:, :1], picked], dim=1)


def _mask_kept(x: Tensor, predictor: PredictorLG, n_keep: int, kept: Tensor) -> Tensor:
    """The new keep mask: the ``n_keep`` best-scored of the tokens kept so far."""
    spatial = x[:, 1:]
    score = predictor(spatial, kept[..., None].to(x.dtype))[..., 0]
    keep = score.masked_fill(~kept, float("-inf")).topk(n_keep, dim=1).indices
    return torch.zeros_like(kept).scatter_(1, keep, True)


def _init_predictor(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)

