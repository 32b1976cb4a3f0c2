"""`head="features"` across the transformer families: the pooled embedding the classifier sees, equal to timm's
pre-logits, loadable from checkpoints with or without a classifier, exported as `embeddings`."""

import pytest
import torch
from _parity import PARITY_ATOL, perturbed

from vitexport.errors import VitExportError
from vitexport.models import create_model, get_spec, list_models

TRANSFORMERS = ("vit", "deit", "beit", "mae")


@pytest.mark.parametrize("name", ["test_vit", "test_deit_distilled", "test_beit", "test_mae"])
def test_features_are_what_the_classifier_sees(name, tmp_path):
    source = perturbed(create_model(name))
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)
    features = create_model(name, head="features", checkpoint=str(path))
    assert not any(k.startswith(("head.", "head_dist.")) for k in features.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        embeddings = features(x)
        assert embeddings.shape == (3, features.num_features)
        assert (embeddings - source.forward_embeddings(x)).abs().max().item() <= PARITY_ATOL
        # Logits are the classifier applied to them (distilled DeiT's two heads each see their own token instead).
        if not hasattr(source, "head_dist"):
            assert (source.head(embeddings) - source(x)).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize(
    ("name", "timm_name", "kwargs"),
    [
        ("test_vit", "vit_tiny_patch16_224", {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 64}),
        ("test_deit_distilled", "deit_tiny_distilled_patch16_224", {"embed_dim": 64, "depth": 2, "num_heads": 2}),
    ],
)
def test_vit_and_deit_features_are_timms_pre_logits(timm, name, timm_name, kwargs):
    reference = perturbed(timm.create_model(timm_name, pretrained=False, **(kwargs | {"img_size": 64})))
    spec = get_spec(name)
    ours = create_model(name, head="features")
    sd = {k: v for k, v in reference.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    from vitexport.weights import load_state_dict

    load_state_dict(ours, sd, "timm", spec.checkpoint_filter)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert (ours(x) - expected).abs().max().item() <= PARITY_ATOL


def test_every_transformer_family_offers_features():
    for spec in list_models(include_test=True):
        if spec.family in TRANSFORMERS:
            with torch.device("meta"):
                model = spec.build()
            assert hasattr(model, "remove_head") and model.num_features > 0, spec.name


def test_unknown_head_and_families_without_features():
    with pytest.raises(VitExportError, match="head must be one of logits, features"):
        create_model("test_vit", head="pooled")
    with pytest.raises(VitExportError, match=r"test_resnet \(resnet\) has no features head"):
        create_model("test_resnet", head="features")


def test_distilled_deit_exports_embeddings(tmp_path):
    from vitexport.export.onnx import Heads, export_onnx

    artifact = export_onnx("test_deit_distilled", tmp_path / "deit.onnx", heads=Heads.features)
    assert artifact.output_names == ("embeddings",) and artifact.num_classes == 64
    assert {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4}
