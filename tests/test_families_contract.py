"""The contract every registered family keeps, run over the registry's tiny test configs (timm's way: one test over
the registry instead of a copy per family): it builds with the registered shape and size; it computes what timm's
model (and Hugging Face's, where the family has one) computes with the same perturbed weights, under either attention
implementation; it exports to ONNX with a dynamic batch that ONNX Runtime runs as PyTorch does; its attention fuses
(ONNX Runtime's MultiHeadAttention, the opset-23 ONNX Attention op) block for block with nothing left unfused and the
same outputs; the graph's MACs are the registry's; and a family with a features head gives the embedding its
classifier sees, timm's pre-logits, from checkpoints with or without a classifier, and exports it.

What only one family has (checkpoint layouts, input-size resampling, windows, published sizes) stays in its own
test_vitexport_<family>.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from _parity import PARITY_ATOL, assert_onnx_matches_pytorch, assert_same, max_diff
from _references import HUGGING_FACE, TIMM
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import CheckpointError, VitExportError
from vitexport.export.fusion import Fusion, attention_audit, op_counts
from vitexport.export.onnx import Heads, export_onnx
from vitexport.export.optimize import optimize
from vitexport.models import create_model, get_spec, list_models
from vitexport.ort import ort_session
from vitexport.weights import load_state_dict

TINY = [s for s in list_models(include_test=True) if s.for_tests]
# DETR's contract (pixels and a mask in, boxes out) is test_export_detection's and test_vitexport_detr's; it is built
# and sized here with the others.
CLASSIFIERS = [s.name for s in TINY if s.task == "classification"]
FEATURES = ("vit", "deit", "beit", "mae")  # the families with a features head
WITH_FEATURES = [s.name for s in TINY if s.family in FEATURES]


def first_of_each_family(names: list[str]) -> list[str]:
    """Where a test exports, one tiny config per family: test_vit_digits is test_vit with another head."""
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(get_spec(name).family, name)
    return list(first.values())


EXPORTED = first_of_each_family(CLASSIFIERS)
WITHOUT_FEATURES = [s.name for s in TINY if s.family not in FEATURES]
CLASSIFIER_KEYS = ("head.", "head_dist.")  # what remove_head() takes away


def attention_blocks(name: str) -> int:
    """The attention blocks every fusion must fuse (0 for a convolutional network)."""
    return getattr(get_spec(name).arch, "depth", 0)


def test_the_registry_has_a_tiny_config_of_every_family():
    families = {s.family for s in list_models(include_test=True)}
    assert families == {s.family for s in TINY}


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.name)
def test_builds_with_its_registered_shape_and_size(spec):
    model = create_model(spec.name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == spec.num_params
    x = torch.randn(2, 3, spec.img_size, spec.img_size)
    with torch.inference_mode():
        if spec.task == "detection":
            logits, boxes = model(x, torch.ones(2, spec.img_size, spec.img_size, dtype=torch.int64))
            assert logits.shape == (2, spec.arch.num_queries, spec.num_classes + 1)
            assert boxes.shape == (2, spec.arch.num_queries, 4)
        else:
            out = model(x)
            assert out.shape == (2, spec.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("name", list(TIMM))
def test_parity_with_timm(timm, name, attention):
    reference = TIMM[name](timm)
    ours = create_model(name, attention=attention)
    load_state_dict(ours, reference.state_dict(), "timm", get_spec(name).checkpoint_filter)
    assert_same(ours, reference, img_size=get_spec(name).img_size)


@pytest.mark.parametrize("name", list(HUGGING_FACE))
def test_parity_with_hugging_face(transformers, name):
    reference = HUGGING_FACE[name](transformers)
    ours = create_model(name)
    load_state_dict(ours, reference.state_dict(), "transformers", get_spec(name).checkpoint_filter)
    assert_same(ours, lambda x: reference(pixel_values=x).logits)
    if name == "test_beit":  # BEiT's pooled output is what our features head gives
        x = torch.randn(2, 3, 64, 64)
        with torch.inference_mode():
            pooled = reference.beit(pixel_values=x).pooler_output
            assert (ours.forward_embeddings(x) - pooled).abs().max().item() <= PARITY_ATOL


def test_every_classifier_has_a_reference_or_says_why_not():
    # ResNet's tiny config (width 8) has no timm equivalent (timm's ResNet stem is 64 wide); its layout is checked
    # against timm's full-size resnet18 and resnet50 in test_vitexport_weights.
    assert set(CLASSIFIERS) - set(TIMM) == {"test_resnet"}


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_export_has_a_dynamic_batch_that_matches_pytorch(tiny, name):
    exported = tiny(name)
    artifact = exported.onnx
    assert artifact.validation["passed"]
    assert {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4}
    assert artifact.output_names == ("logits",) and artifact.num_classes == get_spec(name).num_classes
    session = ort_session(artifact.path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, symbolic batch axis
    # Batch sizes export_onnx did not validate.
    assert_onnx_matches_pytorch(session, exported.model, classes=get_spec(name).num_classes)


@pytest.mark.parametrize("fusion", [Fusion.ort, Fusion.onnx])
@pytest.mark.parametrize("name", EXPORTED)
def test_attention_fuses_block_for_block_and_still_matches_pytorch(tiny, name, fusion, tmp_path):
    exported = tiny(name)
    blocks = attention_blocks(name)
    variant = optimize(exported.onnx, fuse_attention=fusion, output=tmp_path / "fused.onnx")
    before, after = variant.details["op_counts"]["before"], variant.details["op_counts"]["after"]
    assert before.get("Softmax", 0) == blocks and "Softmax" not in after
    assert variant.details["attention"] == {"fused_attention": blocks, "softmax": 0}
    assert attention_audit(op_counts(onnx.load(variant.path)), fusion) == {"fused_attention": blocks, "softmax": 0}
    if fusion is Fusion.ort:
        assert after.get("com.microsoft::MultiHeadAttention", 0) == blocks
    else:
        assert after.get("Attention", 0) == blocks
        assert not [k for k in after if "::" in k], "the TensorRT graph must hold standard ONNX ops only"
        assert next(o.version for o in onnx.load(variant.path).opset_import if o.domain == "") == 23
    assert variant.validation["passed"] and variant.sidecar.is_file()
    # Against PyTorch itself, not only the fp32 ONNX the gate compared it with.
    assert_onnx_matches_pytorch(ort_session(variant.path), exported.model, classes=get_spec(name).num_classes)


@pytest.mark.parametrize("name", EXPORTED)
def test_macs_counted_from_the_graph_are_the_registrys(tiny, name):
    """What `bench` counts for an imported file's rows is what the registry counts for ours, to the MAC."""
    from vitexport.export.onnx_macs import onnx_macs

    artifact = tiny(name).onnx
    spec = get_spec(name)
    assert onnx_macs(artifact.path, artifact.input_name, spec.img_size) == spec.macs()


@pytest.mark.parametrize("name", first_of_each_family(WITH_FEATURES))
def test_features_are_what_the_classifier_sees(tiny, name, tmp_path):
    exported = tiny(name)
    source = exported.model
    features = create_model(name, head="features", checkpoint=str(exported.checkpoint))
    assert not any(k.startswith(CLASSIFIER_KEYS) for k in features.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        embeddings = features(x)
        assert embeddings.shape == (3, features.num_features)
        assert (embeddings - source.forward_embeddings(x)).abs().max().item() <= PARITY_ATOL
        # Logits are the classifier applied to them (distilled DeiT's two heads each see their own token instead).
        if not hasattr(source, "head_dist"):
            assert (source.head(embeddings) - source(x)).abs().max().item() <= PARITY_ATOL
    # A checkpoint without its classifier loads for features, and only for features.
    headless = tmp_path / "headless.pth"
    sd = torch.load(exported.checkpoint, weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith(CLASSIFIER_KEYS)}, headless)
    assert max_diff(create_model(name, head="features", checkpoint=str(headless)), features, 64) == 0
    with pytest.raises(CheckpointError, match=r"missing head\.weight, head\.bias"):
        create_model(name, checkpoint=str(headless))


@pytest.mark.parametrize("name", [n for n in WITH_FEATURES if n in TIMM])
def test_features_are_timms_pre_logits(timm, name):
    reference = TIMM[name](timm)
    sd = {k: v for k, v in reference.state_dict().items() if not k.startswith(CLASSIFIER_KEYS)}
    ours = create_model(name, head="features")
    load_state_dict(ours, sd, "timm", get_spec(name).checkpoint_filter)
    assert_same(ours, lambda x: reference.forward_head(reference.forward_features(x), pre_logits=True))


@pytest.mark.parametrize("name", first_of_each_family(WITH_FEATURES))
def test_features_export_as_embeddings(tiny, name, tmp_path):
    exported = tiny(name)
    artifact = export_onnx(name, tmp_path / "features.onnx", heads=Heads.features, checkpoint=exported.checkpoint)
    # export_onnx validates the dynamic batch axis against PyTorch at batch 1 and 4 itself.
    assert {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4}
    assert artifact.output_names == ("embeddings",) and artifact.num_classes == exported.model.num_features
    session = ort_session(artifact.path)
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    x = torch.randn(3, 3, 64, 64)
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        expected = exported.model.forward_embeddings(x).numpy()
    assert got.shape == (3, exported.model.num_features)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", WITHOUT_FEATURES)
def test_families_without_a_features_head_say_so(name):
    spec = get_spec(name)
    with pytest.raises(VitExportError, match=rf"^{name} \({spec.family}\) has no features head"):
        create_model(name, head="features")


def test_every_variant_of_a_family_with_features_offers_them():
    for spec in list_models(include_test=True):
        if spec.family in FEATURES:
            with torch.device("meta"):
                model = spec.build()
            assert hasattr(model, "remove_head") and model.num_features > 0, spec.name


def test_an_unknown_head_is_one_line():
    with pytest.raises(VitExportError, match="head must be one of logits, features"):
        create_model("test_vit", head="pooled")


FAMILY_MODELS = {
    "swin": [
        "swin_tiny_patch4_window7_224",
        "swin_small_patch4_window7_224",
        "swin_base_patch4_window7_224",
        "swin_base_patch4_window12_384",
    ],
    "mobilevit": ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"],
    "beit": ["beit_base_patch16_224", "beit_large_patch16_224", "beit_base_patch16_384"],
    "mae": ["mae_vit_base_patch16_224", "mae_vit_large_patch16_224", "mae_vit_huge_patch14_224"],
}


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_models_lists_the_family(family):
    result = CliRunner().invoke(app, ["models", "--json", "--family", family])
    assert result.exit_code == 0
    assert [m["name"] for m in json.loads(result.output)] == FAMILY_MODELS[family]
