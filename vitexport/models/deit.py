"""DeiT (Touvron et al., arXiv 2012.12877): ViT trained data-efficiently, optionally distilled through a
distillation token whose own head learns from a convnet teacher."""

from __future__ import annotations

import torch
from torch import nn

from vitexport.models.vit import SIZES, VisionTransformer, ViTConfig
from vitexport.registry import ModelSpec, PreprocessConfig, register


class DistilledVisionTransformer(VisionTransformer):
    """ViT with a distillation token after the class token and a second head on it (timm: `head_dist`)."""

    def __init__(self, cfg: ViTConfig, img_size: int = 224, attention: str = "sdpa"):
        super().__init__(cfg, img_size, attention)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.head_dist = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        return torch.cat([self.cls_token, self.dist_token], dim=1).expand(batch, -1, -1)  # (B, 2, D)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the class head and of the distillation head, each (B, num_classes)."""
        x = self.forward_features(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At test time DeiT averages the two heads' logits (paper §5.2 "late fusion").
        cls_logits, dist_logits = self.forward_heads(x)
        return (cls_logits + dist_logits) / 2


def build_deit(cfg: ViTConfig, *, img_size: int, attention: str = "sdpa") -> VisionTransformer:
    if cfg.distilled:
        return DistilledVisionTransformer(cfg, img_size, attention)
    return VisionTransformer(cfg, img_size, attention)


def _register_deit() -> None:
    # The official DeiT checkpoints: ImageNet mean/std, bicubic, crop 0.875 at 224 and 1.0 at 384.
    variants = [(size, img) for size in ("tiny", "small", "base") for img in (224,)] + [("base", 384)]
    for distilled in (False, True):
        for size, img in variants:
            dim, depth, heads = SIZES[size]
            kind = "_distilled" if distilled else ""
            name = f"deit_{size}{kind}_patch16_{img}"
            register(
                ModelSpec(
                    name=name,
                    family="deit",
                    arch=ViTConfig(16, dim, depth, heads, distilled=distilled),
                    preprocess=PreprocessConfig(img, crop_pct=0.875 if img == 224 else 1.0),
                    builder=build_deit,
                    hub_id=f"{name}.fb_in1k",
                    aliases=(f"deit_{size}{kind}" + ("" if img == 224 else f"_{img}"),),
                )
            )
    register(
        ModelSpec(
            name="test_deit_distilled",
            family="deit",
            arch=ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, distilled=True),
            preprocess=PreprocessConfig(64),
            builder=build_deit,
            for_tests=True,
        )
    )


_register_deit()
