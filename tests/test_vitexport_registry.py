import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitexport.errors import UnknownModelError
from vitexport.models import create_model, get_spec, list_models

ALL = list_models(include_test=True)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_shape_params_and_macs_of_every_model(spec):
    # On the meta device: shapes, parameter count and FLOPs of full-size models without computing anything.
    with torch.device("meta"):
        model = spec.build()
    x = torch.empty(2, 3, spec.img_size, spec.img_size, device="meta")
    counter = FlopCounterMode(display=False)
    if spec.task == "detection":
        mask = torch.ones(2, spec.img_size, spec.img_size, dtype=torch.int64, device="meta")
        with counter:
            logits, boxes = model(x, mask)
        assert logits.shape == (2, spec.arch.num_queries, spec.num_classes + 1)  # and "no object"
        assert boxes.shape == (2, spec.arch.num_queries, 4)
    else:
        with counter:
            out = model(x)
        assert out.shape == (2, spec.num_classes)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params
    assert counter.get_total_flops() == 2 * 2 * spec.macs()  # batch 2, FLOPs = 2 x MACs


@pytest.mark.parametrize(
    ("name", "params_m", "gmacs"),
    [  # published figures: DeiT paper Table 1, Swin paper Table 1 (28M, 50M, 88M) and torchvision's model cards
        ("deit_tiny_patch16_224", 5.7, 1.3),
        ("deit_small_patch16_224", 22.1, 4.6),
        ("deit_base_patch16_224", 86.6, 17.6),
        ("deit_base_distilled_patch16_224", 87.3, 17.7),
        ("vit_large_patch16_224", 304.3, 61.6),
        ("beit_base_patch16_224", 86.5, 17.6),  # timm's model cards for its BEiT weights
        ("beit_large_patch16_224", 304.4, 61.6),
        ("beit_base_patch16_384", 86.7, 55.5),
        ("mae_vit_base_patch16_224", 86.6, 17.6),  # ViT-B and ViT-L with their classifier, as above
        ("mae_vit_large_patch16_224", 304.3, 61.6),
        ("swin_tiny_patch4_window7_224", 28.3, 4.5),
        ("swin_small_patch4_window7_224", 49.6, 8.7),
        ("swin_base_patch4_window7_224", 87.8, 15.4),
        ("resnet18", 11.7, 1.8),
        ("resnet50", 25.6, 4.1),
        ("resnet152", 60.2, 11.5),
        # DETR paper Table 1: 41M and 60M parameters (its GFLOPs are at COCO's mean image size, not 800 x 800)
        ("detr_resnet50", 41.5, 60.2),
        ("detr_resnet101", 60.5, 107.5),
    ],
)
def test_published_sizes(name, params_m, gmacs):
    spec = get_spec(name)
    assert round(spec.num_params / 1e6, 1) == params_m
    assert round(spec.macs() / 1e9, 1) == gmacs


@pytest.mark.parametrize(
    "name", ["test_vit", "test_deit_distilled", "test_beit", "test_mae", "test_swin", "test_mobilevit", "test_resnet"]
)
def test_tiny_models_run(name):
    model = create_model(name)
    spec = get_spec(name)
    logits = model(torch.randn(3, 3, spec.img_size, spec.img_size))
    assert logits.shape == (3, 1000)
    assert torch.isfinite(logits).all()
    assert not model.training


def test_aliases_resolve_to_canonical_names():
    assert get_spec("deit_base").name == "deit_base_patch16_224"
    assert get_spec("deit_base_distilled_384").name == "deit_base_distilled_patch16_384"
    assert get_spec("vit_base_32").name == "vit_base_patch32_224"
    assert get_spec("deit_base_patch16_224") is get_spec("deit_base")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"did you mean.*deit_base"):
        get_spec("deit_bsae")
    with pytest.raises(UnknownModelError, match="vitexport models"):
        get_spec("alexnet")


def test_preprocessing_follows_the_checkpoints():
    assert get_spec("deit_small").preprocess.crop_pct == 0.875
    assert get_spec("deit_base_384").preprocess.crop_pct == 1.0
    assert get_spec("vit_base").preprocess.mean == (0.5, 0.5, 0.5)
    assert get_spec("resnet50").preprocess.interpolation == "bilinear"
    assert get_spec("swin_tiny").preprocess.crop_pct == 0.9
    assert get_spec("swin_base_384").preprocess.crop_pct == 1.0
    assert {s.family for s in list_models()} == {"vit", "deit", "beit", "mae", "swin", "mobilevit", "resnet", "detr"}
    assert not any(s.for_tests for s in list_models())


def test_distilled_deit_averages_its_two_heads():
    model = create_model("test_deit_distilled")
    x = torch.randn(2, 3, 64, 64)
    cls_logits, dist_logits = model.forward_heads(x)
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)


def test_explicit_attention_matches_sdpa():
    sdpa = create_model("test_vit")
    explicit = create_model("test_vit", attention="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(explicit(x), sdpa(x), atol=1e-5, rtol=0)
