"""The independent implementations of the tiny test configs, with perturbed weights (tests/_parity.py): timm's model
and, where the family has one, Hugging Face transformers' image classifier. Shared by the family contract test
(tests/test_families_contract.py) and the family-specific tests that need the same references at other sizes or
in other checkpoint layouts."""

from __future__ import annotations

from _parity import perturbed

from vitexport.models import get_spec

SWIN = {"window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)}  # test_swin in timm's arguments
VIT = {"patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2}  # test_vit, test_mae in timm's arguments


def timm_vit(timm, img_size=64, **kwargs):
    return timm.models.vision_transformer.VisionTransformer(img_size=img_size, **(VIT | kwargs))


def timm_beit(timm, img_size=64, **kwargs):
    args = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, use_abs_pos_emb=False, use_rel_pos_bias=True)
    return timm.models.beit.Beit(img_size=img_size, init_values=0.1, **(args | kwargs))


def timm_mae_classifier(timm, img_size=64):
    return perturbed(timm_vit(timm, img_size, global_pool="avg", fc_norm=True))


def timm_swin(timm, img_size=64):
    return perturbed(timm.create_model("swin_tiny_patch4_window7_224", img_size=img_size, **SWIN))


def timm_mobilevit(timm, img_size=64):
    """test_mobilevit as a timm ByobNet, from timm's own MobileViT block configs."""
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block

    a = get_spec("test_mobilevit").arch
    (c1, c2, c3, c4, c5), (d3, d4, d5) = a.channels, a.transformer_dims
    mvit = {"s": 2, "patch_size": a.patch_size, "br": a.expand_ratio}
    cfg = ByoModelCfg(
        blocks=(
            _inverted_residual_block(d=1, c=c1, s=1, br=a.expand_ratio),
            _inverted_residual_block(d=3, c=c2, s=2, br=a.expand_ratio),
            _mobilevit_block(d=1, c=c3, transformer_dim=d3, transformer_depth=2, **mvit),
            _mobilevit_block(d=1, c=c4, transformer_dim=d4, transformer_depth=4, **mvit),
            _mobilevit_block(d=1, c=c5, transformer_dim=d5, transformer_depth=3, **mvit),
        ),
        stem_chs=a.stem_chs,
        stem_type="3x3",
        stem_pool="",
        downsample="",
        act_layer="silu",
        num_features=a.num_features,
    )
    return perturbed(ByobNet(cfg, img_size=img_size))


# Each tiny classifier's timm reference, perturbed (the 64 px input of every tiny config).
TIMM = {
    "test_vit": lambda timm: perturbed(timm_vit(timm)),
    "test_vit_digits": lambda timm: perturbed(timm_vit(timm, num_classes=10)),
    "test_deit_distilled": lambda timm: perturbed(
        timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, embed_dim=64, depth=2, num_heads=2)
    ),
    "test_beit": lambda timm: perturbed(timm_beit(timm)),
    "test_mae": timm_mae_classifier,
    "test_swin": timm_swin,
    "test_mobilevit": timm_mobilevit,
}


def hf_beit(transformers, shared=False, img_size=64):
    config = transformers.BeitConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        image_size=img_size,
        patch_size=16,
        num_labels=1000,
        use_relative_position_bias=not shared,
        use_shared_relative_position_bias=shared,
        use_absolute_position_embeddings=False,
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
        layer_norm_eps=1e-6,  # BEiT's (and timm's); transformers defaults to 1e-12
    )
    return perturbed(transformers.BeitForImageClassification(config))


def hf_swin(transformers, img_size=64):
    a = get_spec("test_swin").arch
    config = transformers.SwinConfig(
        image_size=img_size,
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depths=list(a.depths),
        num_heads=list(a.num_heads),
        window_size=a.window_size,
        num_labels=a.num_classes,
    )
    return perturbed(transformers.SwinForImageClassification(config))


def hf_mobilevit(transformers, img_size=64):
    a = get_spec("test_mobilevit").arch
    config = transformers.MobileViTConfig(
        image_size=img_size,
        patch_size=a.patch_size,
        neck_hidden_sizes=[a.stem_chs, *a.channels, a.num_features],
        hidden_sizes=list(a.transformer_dims),
        expand_ratio=a.expand_ratio,
        num_attention_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        num_labels=a.num_classes,
    )
    return perturbed(transformers.MobileViTForImageClassification(config))


# Each tiny classifier's Hugging Face reference, where the family has one the tests check against.
HUGGING_FACE = {"test_beit": hf_beit, "test_swin": hf_swin, "test_mobilevit": hf_mobilevit}
