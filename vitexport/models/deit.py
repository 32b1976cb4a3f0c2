"""DeiT (Touvron et al., arXiv 2012.12877): ViT trained data-efficiently, optionally distilled through a
distillation token whose own head learns from a convnet teacher."""

from __future__ import annotations

import torch
from torch import nn

from vitexport.models.vit import SIZES, VisionTransformer, ViTConfig
from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.vit import checkpoint_filter


class DistilledVisionTransformer(VisionTransformer):
    """ViT with a distillation token after the class token and a second head on it (timm: `head_dist`)."""

    def __init__(self, cfg: ViTConfig, img_size: int = 224, attention: str = "sdpa"):
        super().__init__(cfg, img_size, attention)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.head_dist: nn.Module = nn.Linear(cfg.embed_dim, cfg.num_classes)  # nn.Identity() after remove_head()

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        return torch.cat([self.cls_token, self.dist_token], dim=1).expand(batch, -1, -1)  # (B, 2, D)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the class head and of the distillation head, each (B, num_classes)."""
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the class and distillation tokens (B, D), as timm's pre-logits for distilled models: each
        head sees one of the two tokens, and this one vector stands for both."""
        x = self.forward_features(x)
        return (x[:, 0] + x[:, 1]) / 2

    def remove_head(self) -> None:
        super().remove_head()
        self.head_dist = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At test time DeiT averages the two heads' logits (paper §5.2 "late fusion").
        cls_logits, dist_logits = self.forward_heads(x)
        return (cls_logits + dist_logits) / 2


def build_deit(cfg: ViTConfig, *, img_size: int, attention: str = "sdpa") -> VisionTransformer:
    if cfg.distilled:
        return DistilledVisionTransformer(cfg, img_size, attention)
    return VisionTransformer(cfg, img_size, attention)


# name, alias, size, input size, distilled. The official DeiT checkpoints: ImageNet mean/std, bicubic, crop 0.875
# at 224 and 1.0 at 384; timm hosts them all as NAME.fb_in1k.
VARIANTS = [
    ("deit_tiny_patch16_224", "deit_tiny", "tiny", 224, False),
    ("deit_small_patch16_224", "deit_small", "small", 224, False),
    ("deit_base_patch16_224", "deit_base", "base", 224, False),
    ("deit_base_patch16_384", "deit_base_384", "base", 384, False),
    ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled", "tiny", 224, True),
    ("deit_small_distilled_patch16_224", "deit_small_distilled", "small", 224, True),
    ("deit_base_distilled_patch16_224", "deit_base_distilled", "base", 224, True),
    ("deit_base_distilled_patch16_384", "deit_base_distilled_384", "base", 384, True),
]

for name, alias, size, img, distilled in VARIANTS:
    dim, depth, heads = SIZES[size]
    register(
        ModelSpec(
            name=name,
            family="deit",
            arch=ViTConfig(16, dim, depth, heads, distilled=distilled),
            preprocess=PreprocessConfig(img, crop_pct=0.875 if img == 224 else 1.0),
            builder=build_deit,
            checkpoint_filter=checkpoint_filter,
            hub_id=f"{name}.fb_in1k",
            aliases=(alias,),
        )
    )

register(
    ModelSpec(
        name="test_deit_distilled",
        family="deit",
        arch=ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, distilled=True),
        preprocess=PreprocessConfig(64),
        builder=build_deit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
