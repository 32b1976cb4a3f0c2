"""Vision Transformer (Dosovitskiy et al., arXiv 2010.11929), with timm's parameter names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitexport.models.layers import Block, PatchEmbed
from vitexport.preprocess import INCEPTION_MEAN, INCEPTION_STD, PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.vit import checkpoint_filter


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    distilled: bool = False  # DeiT's distillation token and second head
    # "token": the class token after a final norm (ViT, DeiT); "avg": the mean of the patch tokens, normed by
    # fc_norm, and no final norm over all tokens (MAE's fine-tuned classifiers, timm's global_pool="avg").
    global_pool: str = "token"

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    def num_tokens(self, img_size: int) -> int:
        return (img_size // self.patch_size) ** 2 + self.num_prefix_tokens

    def num_params(self, img_size: int) -> int:
        # pos_embed has one row per token, so the count depends on the input size. fc_norm ("avg") replaces norm:
        # the same 2D parameters either way.
        D, H, C = self.embed_dim, int(self.embed_dim * self.mlp_ratio), self.num_classes
        block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * H + H) + (H * D + D)
        heads = (D * C + C) * (2 if self.distilled else 1)
        tokens = self.num_prefix_tokens * D
        patch = 3 * self.patch_size**2 * D + D
        return patch + tokens + self.num_tokens(img_size) * D + self.depth * block + 2 * D + heads

    def macs(self, img_size: int) -> int:
        D, H, T = self.embed_dim, int(self.embed_dim * self.mlp_ratio), self.num_tokens(img_size)
        patches = (img_size // self.patch_size) ** 2
        block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * H  # qkv, QKᵀ and AV, proj, mlp
        heads = D * self.num_classes * (2 if self.distilled else 1)
        return patches * D * 3 * self.patch_size**2 + self.depth * block + heads


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig, img_size: int = 224, attention: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_tokens(img_size), D) * 0.02)
        self.blocks = nn.Sequential(*[Block(D, cfg.num_heads, cfg.mlp_ratio, attention) for _ in range(cfg.depth)])
        self.num_features = D  # width of forward_embeddings
        if cfg.global_pool == "avg":
            self.fc_norm = nn.LayerNorm(D, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head: nn.Module = nn.Linear(D, cfg.num_classes)  # nn.Identity() after remove_head()

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        return self.cls_token.expand(batch, -1, -1)  # (B, 1, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, 3, H, W) -> (B, N, D)
        x = torch.cat([self.prefix_tokens(x.shape[0]), x], dim=1)  # -> (B, T, D), T = N + prefix tokens
        x = self.blocks(x + self.pos_embed)
        return x if self.cfg.global_pool == "avg" else self.norm(x)

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation the classifier sees (timm's pre-logits) -> (B, D)."""
        x = self.forward_features(x)
        if self.cfg.global_pool == "avg":
            return self.fc_norm(x[:, self.cfg.num_prefix_tokens :].mean(dim=1))  # mean of the patch tokens
        return x[:, 0]  # class token

    def remove_head(self) -> None:
        """Drop the classifier: `forward` then returns `forward_embeddings` (vitexport's `--head features`)."""
        self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_embeddings(x))  # -> (B, num_classes)


def build_vit(cfg: ViTConfig, *, img_size: int, attention: str = "sdpa") -> VisionTransformer:
    return VisionTransformer(cfg, img_size, attention)


SIZES = {  # width, depth, heads (ViT paper Table 1; tiny and small from DeiT)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


# name, alias, size, patch, input size, timm's weights tag (None: timm has no weights). The AugReg checkpoints
# normalise to [-1, 1] (inception mean/std); 224 models crop 0.9, 384 models see the whole image.
VARIANTS = [
    ("vit_tiny_patch16_224", "vit_tiny", "tiny", 16, 224, "augreg_in21k_ft_in1k"),
    ("vit_tiny_patch16_384", "vit_tiny_384", "tiny", 16, 384, "augreg_in21k_ft_in1k"),
    ("vit_small_patch16_224", "vit_small", "small", 16, 224, "augreg_in21k_ft_in1k"),
    ("vit_small_patch16_384", "vit_small_384", "small", 16, 384, "augreg_in21k_ft_in1k"),
    ("vit_base_patch16_224", "vit_base", "base", 16, 224, "augreg_in21k_ft_in1k"),
    ("vit_base_patch16_384", "vit_base_384", "base", 16, 384, "augreg_in21k_ft_in1k"),
    ("vit_base_patch32_224", "vit_base_32", "base", 32, 224, "augreg_in21k_ft_in1k"),
    ("vit_base_patch32_384", "vit_base_32_384", "base", 32, 384, "augreg_in21k_ft_in1k"),
    ("vit_large_patch16_224", "vit_large", "large", 16, 224, "augreg_in21k_ft_in1k"),
    ("vit_large_patch16_384", "vit_large_384", "large", 16, 384, "augreg_in21k_ft_in1k"),
    ("vit_large_patch32_224", "vit_large_32", "large", 32, 224, None),
    ("vit_large_patch32_384", "vit_large_32_384", "large", 32, 384, "orig_in21k_ft_in1k"),
]

for name, alias, size, patch, img, tag in VARIANTS:
    dim, depth, heads = SIZES[size]
    register(
        ModelSpec(
            name=name,
            family="vit",
            arch=ViTConfig(patch, dim, depth, heads),
            preprocess=PreprocessConfig(img, INCEPTION_MEAN, INCEPTION_STD, 0.9 if img == 224 else 1.0),
            builder=build_vit,
            checkpoint_filter=checkpoint_filter,
            hub_id=f"{name}.{tag}" if tag else None,
            aliases=(alias,),
        )
    )

# A tiny config for fast tests: a 4x4 grid of 16-pixel patches, width 64, two blocks.
register(
    ModelSpec(
        name="test_vit",
        family="vit",
        arch=ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2),
        preprocess=PreprocessConfig(64, INCEPTION_MEAN, INCEPTION_STD, 0.9),
        builder=build_vit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
# Ten classes and no crop: the accuracy gate's tests train it on scikit-learn's digits (benchmarks/digits.py).
register(
    ModelSpec(
        name="test_vit_digits",
        family="vit",
        arch=ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=10),
        preprocess=PreprocessConfig(64, INCEPTION_MEAN, INCEPTION_STD, 1.0),
        builder=build_vit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
