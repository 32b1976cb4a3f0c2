"""MAE (He et al., arXiv 2111.06377): ViTs pre-trained as masked autoencoders. The registered models are the
paper's fine-tuned classifiers: ViT with the mean of the patch tokens normed by fc_norm, and no final norm
(the official `models_vit.VisionTransformer(global_pool=True)`, timm's `global_pool="avg"`). The pretrained
encoders (no classifier) load into them with `create_model(..., head="features")`; see vitexport.weights.mae."""

from __future__ import annotations

from vitexport.models.vit import ViTConfig, build_vit
from vitexport.preprocess import PreprocessConfig
from vitexport.registry import ModelSpec, register
from vitexport.weights.mae import checkpoint_filter

# name, alias, patch, width, depth, heads, timm's name of the pretrained encoder. The official fine-tuning and
# evaluation: ImageNet mean/std, bicubic, crop 0.875 at 224. timm hosts only the pretrained encoders
# (NAME.mae, no classifier): --pretrained loads them with --head features; the fine-tuned classifiers come from
# the official releases (--checkpoint mae_finetuned_vit_*.pth).
VARIANTS = [
    ("mae_vit_base_patch16_224", "mae_vit_base", 16, 768, 12, 12, "vit_base_patch16_224.mae"),
    ("mae_vit_large_patch16_224", "mae_vit_large", 16, 1024, 24, 16, "vit_large_patch16_224.mae"),
    ("mae_vit_huge_patch14_224", "mae_vit_huge", 14, 1280, 32, 16, "vit_huge_patch14_224.mae"),
]

for name, alias, patch, dim, depth, heads, hub_id in VARIANTS:
    register(
        ModelSpec(
            name=name,
            family="mae",
            arch=ViTConfig(patch, dim, depth, heads, global_pool="avg"),
            preprocess=PreprocessConfig(224, crop_pct=0.875),
            builder=build_vit,
            checkpoint_filter=checkpoint_filter,
            hub_id=hub_id,
            aliases=(alias,),
        )
    )

# A tiny config for fast tests: a 4x4 grid of 16-pixel patches, width 64, two blocks.
register(
    ModelSpec(
        name="test_mae",
        family="mae",
        arch=ViTConfig(patch_size=16, embed_dim=64, depth=2, num_heads=2, global_pool="avg"),
        preprocess=PreprocessConfig(64, crop_pct=0.875),
        builder=build_vit,
        checkpoint_filter=checkpoint_filter,
        for_tests=True,
    )
)
