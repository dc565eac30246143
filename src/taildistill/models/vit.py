"""DeiT-style ViT student with a CLS token and a DIST token and two heads (DeiT-LT).

Built on timm's VisionTransformerDistilled for any image/patch size. Returns ``logits_cls``,
``logits_dist`` and ``logits`` = their mean (what prediction uses), plus features ``cls`` and
``dist`` (the two tokens after the final norm) and ``pooled`` (their mean). Attention maps per
block are available through :func:`attention_maps` (for the mean-attention-distance analysis).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import MODELS

SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12)}


class DistilledViT(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 size: str = "ti", depth: int | None = None, embed_dim: int | None = None, num_heads: int | None = None,
                 drop_path: float = 0.1):
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled

        from ..errors import ConfigError

        if size not in SIZES:
            raise ConfigError(f"vit size must be one of {', '.join(SIZES)}, got '{size}'")
        if not 0 <= drop_path < 1:
            raise ConfigError(f"drop_path (stochastic depth rate) must be in [0, 1), got {drop_path}")
        if patch_size < 1 or image_size % patch_size:  # timm's patch convolution would drop the border pixels
            raise ConfigError(f"patch_size must divide the {image_size}-pixel images, got {patch_size}")
        if depth is not None and depth < 1:
            raise ConfigError(f"a ViT needs depth >= 1, got {depth}")
        d, n, h = SIZES[size]
        self.vit = VisionTransformerDistilled(
            img_size=image_size, patch_size=patch_size, in_chans=in_channels, num_classes=num_classes,
            embed_dim=embed_dim or d, depth=depth or n, num_heads=num_heads or h, drop_path_rate=drop_path)
        self.feature_dim = embed_dim or d
        self.image_size = image_size
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> dict:
        tokens = self.vit.forward_features(x)  # (B, 2 + N, D), final norm applied
        cls, dist = tokens[:, 0], tokens[:, 1]
        logits_cls, logits_dist = self.vit.head(cls), self.vit.head_dist(dist)
        return {"logits": (logits_cls + logits_dist) / 2, "logits_cls": logits_cls, "logits_dist": logits_dist,
                "features": {"patch_tokens": tokens[:, 2:], "cls": cls, "dist": dist, "pooled": (cls + dist) / 2}}


@torch.no_grad()
def attention_maps(model: DistilledViT, x: torch.Tensor) -> list[torch.Tensor]:
    """Softmax attention of every block: list of (B, heads, 2 + N, 2 + N), recomputed from each
    block's input with its own qkv weights (timm's fused kernels do not return them)."""
    maps: list[torch.Tensor] = []

    def attention(blk, inp, out):
        h = blk.norm1(inp)
        attn = blk.attn
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))

    _forward_with_block_hooks(model, x, attention)
    return maps


def _forward_with_block_hooks(model: DistilledViT, x: torch.Tensor, hook) -> None:
    """One eval-mode forward of `model` on `x` calling `hook(block, block_input, block_output)`
    after every transformer block."""
    handles = [blk.register_forward_hook(lambda m, i, o: hook(m, i[0], o)) for blk in model.vit.blocks]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()


def mean_attention_distance(maps: list[torch.Tensor], grid: int, prefix_tokens: int = 2,
                            patch_size: int = 1) -> torch.Tensor:
    """Mean attention distance (Raghu et al. 2021, as DeiT-LT Suppl. F uses it) per block and head,
    in pixels: for each patch query, sum_k a_qk * ||pos_q - pos_k|| over the patch keys (the
    attention weights as the softmax gave them, the class/distillation tokens' share left out),
    averaged over queries and images. Positions are patch centres `patch_size` pixels apart.
    Returns (blocks, heads)."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float() * patch_size
    dist = torch.cdist(pos, pos)  # (N, N) pixels
    out = []
    for a in maps:
        p = a[:, :, prefix_tokens:, prefix_tokens:]
        out.append((p * dist.to(p.device)).sum(-1).mean(dim=(0, 2)))
    return torch.stack(out)


@torch.no_grad()
def block_tokens(model: DistilledViT, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(CLS, DIST) token outputs of every block: list of ((B, D), (B, D)), for the feature rank per
    block (DeiT-LT Suppl. G)."""
    out: list = []
    _forward_with_block_hooks(model, x, lambda blk, i, o: out.append((o[:, 0].float(), o[:, 1].float())))
    return out


def _vit(size: str):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                depth: int | None = None, embed_dim: int | None = None, num_heads: int | None = None,
                drop_path: float = 0.1):
        return DistilledViT(num_classes, in_channels, image_size, patch_size, size, depth, embed_dim, num_heads, drop_path)

    return factory


for _s in SIZES:
    MODELS.register(f"deit_{_s}_distilled")(_vit(_s))
