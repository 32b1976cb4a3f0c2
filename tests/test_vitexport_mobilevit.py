"""MobileViT: parity with timm and Hugging Face transformers (every parameter and batch-norm statistic perturbed),
the Hub checkpoint layout, sizes, and ONNX export with a dynamic batch."""

import json

import pytest
import torch
from _parity import PARITY_ATOL, assert_onnx_matches_pytorch, export_perturbed, max_diff, perturbed
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import CheckpointError
from vitexport.models import create_model, get_spec
from vitexport.ort import ort_session
from vitexport.weights import load_state_dict


def timm_mobilevit(timm, img_size):
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


@pytest.mark.parametrize(
    ("img_size", "attention"),
    [(64, "sdpa"), (64, "explicit"), (80, "sdpa")],  # at 80 px the last 5x5 map is resized to whole patches
)
def test_parity_with_timm(timm, img_size, attention):
    reference = timm_mobilevit(timm, img_size)
    ours = create_model("test_mobilevit", img_size=img_size, attention=attention)
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("test_mobilevit").checkpoint_filter)
    assert max_diff(ours, reference, img_size) <= PARITY_ATOL


def test_parity_with_timm_mobilevit_xxs(timm):
    reference = perturbed(timm.create_model("mobilevit_xxs"))
    ours = create_model("mobilevit_xxs")
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("mobilevit_xxs").checkpoint_filter)
    assert max_diff(ours, reference, 256, batch=1) <= PARITY_ATOL


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


@pytest.mark.parametrize("img_size", [64, 80])
def test_parity_with_hugging_face(transformers, img_size):
    reference = hf_mobilevit(transformers, img_size)
    ours = create_model("test_mobilevit", img_size=img_size)
    load_state_dict(ours, reference.state_dict(), "transformers", get_spec("test_mobilevit").checkpoint_filter)
    assert max_diff(ours, lambda x: reference(pixel_values=x).logits, img_size) <= PARITY_ATOL


def test_hub_checkpoint_in_a_safetensors_file(tmp_path, transformers):
    from safetensors.torch import save_file

    reference = hf_mobilevit(transformers)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    loaded = create_model("test_mobilevit", checkpoint=str(path))
    assert max_diff(loaded, lambda x: reference(pixel_values=x).logits, 64) <= PARITY_ATOL


def test_hugging_face_checkpoint_without_a_key_projection(transformers):
    sd = {
        k: v for k, v in hf_mobilevit(transformers).state_dict().items() if "layer.0.attention.attention.key" not in k
    }
    with pytest.raises(CheckpointError, match=r"stages\.2\.1\.transformer\.0 has only \['q', 'v'\]"):
        load_state_dict(
            create_model("test_mobilevit"), sd, "transformers", get_spec("test_mobilevit").checkpoint_filter
        )


@pytest.mark.parametrize(("name", "params_m"), [("mobilevit_xxs", 1.3), ("mobilevit_xs", 2.3), ("mobilevit_s", 5.6)])
def test_published_sizes(name, params_m):
    assert round(get_spec(name).num_params / 1e6, 1) == params_m  # as the MobileViT paper reports them


def test_macs_where_maps_are_resized_to_whole_patches():
    spec = get_spec("test_mobilevit").with_img_size(80)
    with torch.device("meta"):
        model = spec.build()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(1, 3, 80, 80, device="meta"))
    assert counter.get_total_flops() == 2 * spec.macs()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


def test_pooled_features_are_what_the_classifier_sees():
    model = create_model("test_mobilevit")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        head_of_pooled = model.head.fc(pooled)
        logits = model(x)
    assert features.shape == (2, model.num_features, 2, 2)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    torch.testing.assert_close(head_of_pooled, logits)


def test_preprocessing_follows_the_cvnets_checkpoints():
    pre = get_spec("mobilevit_s").preprocess
    assert (pre.input_size, pre.mean, pre.std, pre.crop_pct, pre.interpolation) == (
        256,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        0.9,
        "bicubic",
    )
    assert get_spec("mobilevit_s").hub_id == "mobilevit_s.cvnets_in1k"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """test_mobilevit exported through export_onnx (validated against PyTorch at batch 1 and 4), and the model."""
    return export_perturbed("test_mobilevit", tmp_path_factory.mktemp("test_mobilevit"))


def test_onnx_export_has_a_dynamic_batch(exported):
    model, artifact = exported
    assert artifact.validation["passed"]
    session = ort_session(artifact.path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, symbolic batch axis
    assert_onnx_matches_pytorch(session, model)  # batch sizes export_onnx did not validate


def test_onnx_runtime_attention_fusion_leaves_no_softmax(exported):
    import onnx

    from vitexport.export.fusion import Fusion, attention_audit, fuse, op_counts

    model, artifact = exported
    fused, _ = fuse(onnx.load(artifact.path), Fusion.ort)
    assert attention_audit(op_counts(fused), Fusion.ort) == {"fused_attention": 9, "softmax": 0}
    assert get_spec("test_mobilevit").arch.depth == 9  # the attention blocks the TensorRT audit expects
    session = ort_session(fused.SerializeToString())
    assert_onnx_matches_pytorch(session, model)


def test_models_lists_the_family():
    result = CliRunner().invoke(app, ["models", "--json", "--family", "mobilevit"])
    assert result.exit_code == 0
    assert [m["name"] for m in json.loads(result.output)] == ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]
