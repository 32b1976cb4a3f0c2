"""DETR: parity with Hugging Face transformers' DetrForObjectDetection (its own ResNet and timm's, every parameter and
buffer perturbed, frozen BatchNorm statistics too), with and without padding; the official release's and the Hub's
checkpoint layouts; and the ONNX export with its pixel mask."""

import json

import numpy as np
import onnx
import pytest
import torch
from _parity import ONNX_ATOL, PARITY_ATOL, perturbed
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import CheckpointError, ImageError
from vitexport.export.onnx import export_onnx
from vitexport.models import create_model, get_spec
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image
from vitexport.weights import load_state_dict

SIZE = 96  # test_detr's canvas: a 3 x 3 feature map


def hf_tiny_detr(transformers):
    """test_detr in transformers' terms: its own bottleneck ResNet (use_timm_backbone=False), perturbed."""
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    config = transformers.DetrConfig(
        backbone_config=backbone,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        num_labels=4,
    )
    return perturbed(transformers.DetrForObjectDetection(config))


def padded_batch(size: int, batch: int = 3, seed: int = 0):
    """Images on a size x size canvas: the first fills it, the others are padded at the right, the bottom or both, by
    whole and partial feature cells."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, size, size, dtype=torch.int64)
    valid = [(0.85, 0.6), (0.55, 0.9), (0.45, 0.45), (0.7, 0.3)]  # (height, width) of the canvas
    for i in range(1, batch):
        h, w = (int(f * size) for f in valid[(i - 1) % len(valid)])
        mask[i, h:] = 0
        mask[i, :, w:] = 0
    return torch.randn(batch, 3, size, size, generator=generator) * mask[:, None], mask


def assert_same_detections(ours, reference, size: int, batch: int = 3) -> None:
    x, mask = padded_batch(size, batch)
    with torch.inference_mode():
        for m in (None, torch.ones_like(mask), mask):
            expected = reference(pixel_values=x, pixel_mask=m)
            logits, boxes = ours(x, m)
            assert logits.shape == expected.logits.shape and boxes.shape == expected.pred_boxes.shape
            assert expected.logits.abs().max() > 1e-2 and expected.pred_boxes.std() > 1e-3  # a real signal
            assert (logits - expected.logits).abs().max().item() <= PARITY_ATOL
            assert (boxes - expected.pred_boxes).abs().max().item() <= PARITY_ATOL


@pytest.fixture(scope="module")
def hf_tiny(transformers):
    torch.manual_seed(0)
    return hf_tiny_detr(transformers)


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_parity_with_hugging_face_own_resnet(hf_tiny, attention):
    ours = create_model("test_detr", attention=attention)
    load_state_dict(ours, hf_tiny.state_dict(), "transformers", get_spec("test_detr").checkpoint_filter)
    assert_same_detections(ours, hf_tiny, SIZE)


def test_padding_changes_the_detections_and_a_blank_canvas_stays_finite():
    model = perturbed(create_model("test_detr"))
    x, mask = padded_batch(SIZE)
    with torch.inference_mode():
        full, _ = model(x, torch.ones_like(mask))
        padded, _ = model(x, mask)
        blank = model(x, torch.zeros_like(mask))
    assert torch.allclose(full[0], padded[0], atol=1e-6, rtol=0)  # the unpadded image
    assert all((full[i] - padded[i]).abs().max() > 1e-3 for i in range(1, len(x)))  # every padded image
    assert all(torch.isfinite(t).all() for t in blank)  # every key masked: uniform attention, not NaN


@pytest.mark.slow
def test_parity_with_the_hub_layout_detr_resnet50(transformers):
    """The Hub's facebook/detr-resnet-50: the full-size model with timm's ResNet-50 (transformers 4 names, as the
    Hub files have them, and transformers 5 names), at a small canvas for speed."""
    torch.manual_seed(0)
    reference = perturbed(transformers.DetrForObjectDetection(transformers.DetrConfig(num_labels=91)))
    sd = reference.state_dict()
    assert any(k.startswith("model.backbone.model.layer4.") for k in sd)  # timm's (torchvision's) names
    ours = create_model("detr_resnet50", img_size=128)
    load_state_dict(ours, hub_names(sd), "the Hub", get_spec("detr_resnet50").checkpoint_filter)
    assert_same_detections(ours, reference, 128, batch=2)
    load_state_dict(ours, sd, "transformers 5", get_spec("detr_resnet50").checkpoint_filter)
    assert sum(p.numel() for p in ours.parameters()) == get_spec("detr_resnet50").num_params


def hub_names(sd: dict) -> dict:
    """transformers 5 names -> transformers 4's, which the Hub's DETR files use."""
    renamed = {}
    for key, value in sd.items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.").replace(
            ".o_proj.", ".out_proj."
        )
        renamed[key.replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.")] = value
    renamed["model.backbone.conv_encoder.model.layer1.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    return renamed


def official_names(sd: dict) -> dict:
    """Ours -> the facebookresearch/detr release's, wrapped as it saves them: its backbone prefix,
    nn.MultiheadAttention's fused Q, K, V, and a BatchNorm counter as torchvision's BatchNorm leaves them."""
    out = {}
    for key, value in sd.items():
        if ".k_proj." in key or ".v_proj." in key:
            continue
        if ".q_proj." in key:
            parts = [sd[key.replace(".q_proj.", f".{n}_proj.")] for n in "qkv"]
            out[key.replace(".q_proj.", ".in_proj_")] = torch.cat(parts)
        else:
            out[key.replace("backbone.", "backbone.0.body.", 1)] = value
    out["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(0)
    return {"model": out}


def test_official_checkpoint_layout(tmp_path):
    source = perturbed(create_model("test_detr"))
    torch.save(official_names(source.state_dict()), tmp_path / "detr.pth")
    loaded = create_model("test_detr", checkpoint=str(tmp_path / "detr.pth"))
    x, mask = padded_batch(SIZE)
    with torch.inference_mode():
        for a, b in zip(loaded(x, mask), source(x, mask), strict=True):
            assert torch.equal(a, b)


# Tensors of the official detr-r50-e632da11.pth (its {"model": ...}), a sample of every kind, with their shapes.
OFFICIAL_R50 = {
    "backbone.0.body.conv1.weight": (64, 3, 7, 7),
    "backbone.0.body.bn1.running_mean": (64,),
    "backbone.0.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.0.body.layer1.0.downsample.1.running_var": (256,),
    "backbone.0.body.layer4.2.bn3.bias": (2048,),
    "input_proj.weight": (256, 2048, 1, 1),
    "query_embed.weight": (100, 256),
    "transformer.encoder.layers.5.self_attn.in_proj_weight": (768, 256),
    "transformer.encoder.layers.0.self_attn.out_proj.bias": (256,),
    "transformer.encoder.layers.0.linear1.weight": (2048, 256),
    "transformer.encoder.layers.3.norm2.weight": (256,),
    "transformer.decoder.layers.0.self_attn.in_proj_bias": (768,),
    "transformer.decoder.layers.5.multihead_attn.in_proj_weight": (768, 256),
    "transformer.decoder.layers.5.multihead_attn.out_proj.weight": (256, 256),
    "transformer.decoder.layers.2.linear2.weight": (256, 2048),
    "transformer.decoder.layers.1.norm3.bias": (256,),
    "transformer.decoder.norm.weight": (256,),
    "class_embed.weight": (92, 256),
    "bbox_embed.layers.0.weight": (256, 256),
    "bbox_embed.layers.2.bias": (4,),
}


def test_the_official_release_names_map_onto_detr_resnet50():
    with torch.device("meta"):
        model = get_spec("detr_resnet50").build()
    target = model.state_dict()
    mapped = get_spec("detr_resnet50").checkpoint_filter({k: torch.empty(s) for k, s in OFFICIAL_R50.items()}, model)
    fused = sum(".in_proj_" in k for k in OFFICIAL_R50)
    assert len(mapped) == len(OFFICIAL_R50) + 2 * fused  # each fused Q, K, V tensor split in three
    assert all(k in target and tuple(target[k].shape) == tuple(v.shape) for k, v in mapped.items())
    official = official_names(target)["model"]
    attentions = sum(k.endswith("q_proj.weight") for k in target)  # 6 tensors each, 2 in the release
    assert len(official) == len(target) - 4 * attentions + 1  # and one num_batches_tracked
    assert set(OFFICIAL_R50) <= set(official)
    assert not any(k.endswith("num_batches_tracked") for k in target)  # frozen BatchNorm: buffers, no counter


def test_hugging_face_checkpoint_without_a_value_projection(hf_tiny):
    sd = {k: v for k, v in hf_tiny.state_dict().items() if "encoder.layers.0.self_attn.v_proj" not in k}
    with pytest.raises(CheckpointError, match=r"missing transformer\.encoder\.layers\.0\.self_attn\.v_proj\.weight"):
        load_state_dict(create_model("test_detr"), sd, "transformers", get_spec("test_detr").checkpoint_filter)


def test_official_checkpoint_with_a_truncated_in_proj(tmp_path):
    sd = official_names(create_model("test_detr").state_dict())["model"]
    key = "transformer.decoder.layers.0.multihead_attn.in_proj_weight"
    sd[key] = sd[key][:-1]
    with pytest.raises(CheckpointError, match=f"unexpected {key}"):
        load_state_dict(create_model("test_detr"), sd, "official", get_spec("test_detr").checkpoint_filter)


def test_registry_records_detection():
    spec = get_spec("detr_resnet50")
    assert spec.task == "detection" and spec.num_classes == 91 and spec.img_size == 800
    p = spec.preprocess
    assert (p.shortest_edge, p.longest_edge, p.interpolation, p.mean) == (800, 1333, "bilinear", (0.485, 0.456, 0.406))
    assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert "shortest_edge" not in get_spec("resnet50").preprocess.to_dict()  # classifiers' dicts as before
    assert get_spec("resnet50").task == "classification"
    with pytest.raises(ImageError, match="detector"):  # no silent center crop until detection preprocessing exists
        preprocess_image(b"not read", p)


def test_models_lists_the_detectors():
    result = CliRunner().invoke(app, ["models", "--family", "detr"])
    assert result.exit_code == 0
    assert "detr_resnet50" in result.output and "detr_resnet101" in result.output and "800-1333" in result.output
    listed = json.loads(CliRunner().invoke(app, ["models", "--json", "--family", "detr"]).output)
    assert {m["task"] for m in listed} == {"detection"}


@pytest.fixture(scope="module")
def detr_export(hf_tiny, tmp_path_factory):
    """test_detr exported from transformers' model saved as the Hub saves it (safetensors, transformers 4 names):
    (that reference, the validated artifact)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("detr")
    save_file(hub_names(hf_tiny.state_dict()), folder / "model.safetensors")
    return hf_tiny, export_onnx("test_detr", folder / "detr.onnx", checkpoint=folder / "model.safetensors")


def test_export_has_two_inputs_two_outputs_and_a_dynamic_batch(detr_export):
    _, artifact = detr_export
    graph = onnx.load(artifact.path).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert list(inputs) == ["pixel_values", "pixel_mask"]
    assert inputs["pixel_values"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["pixel_mask"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in inputs["pixel_mask"].shape.dim[1:]] == [SIZE, SIZE]
    assert inputs["pixel_values"].shape.dim[0].dim_param == inputs["pixel_mask"].shape.dim[0].dim_param != ""
    assert [o.name for o in graph.output] == ["logits", "pred_boxes"]
    assert (artifact.task, artifact.mask_name, artifact.num_classes) == ("detection", "pixel_mask", 4)
    assert artifact.checkpoint_sha256 is not None
    assert artifact.output_names == ("logits", "pred_boxes")


def test_export_validation_covered_padding_at_batch_1_and_4(detr_export):
    from vitexport.artifacts import load_artifact

    _, artifact = detr_export
    reports = load_artifact(artifact.path).validation["reports"]
    seen = {(r["output"], r["batch_size"]) for r in reports}
    names = ("logits", "pred_boxes", "logits (padded)", "pred_boxes (padded)")
    assert seen == {(n, b) for n in names for b in (1, 4)}
    assert all(r["max_abs"] <= ONNX_ATOL for r in reports)
    assert all((r["top1_agreement"] is None) == r["output"].startswith("pred_boxes") for r in reports)


def test_onnx_runtime_matches_hugging_face_on_other_batches_and_paddings(detr_export):
    reference, artifact = detr_export
    session = ort_session(artifact.path)
    for batch in (2, 5):
        x, mask = padded_batch(SIZE, batch, seed=batch)
        with torch.inference_mode():
            expected = reference(pixel_values=x, pixel_mask=mask)
        got = session.run(None, {"pixel_values": x.numpy(), "pixel_mask": mask.numpy()})
        for e, g in zip((expected.logits, expected.pred_boxes), got, strict=True):
            assert g.shape == tuple(e.shape)
            assert np.abs(g - e.numpy()).max() <= ONNX_ATOL
    blank = session.run(None, {"pixel_values": x.numpy(), "pixel_mask": np.zeros_like(mask.numpy())})
    assert all(np.isfinite(o).all() for o in blank)


def test_opset_23_exports_every_attention_as_one_op(tmp_path):
    # ONNX Runtime's Attention op takes no mask broadcast over the queries: the model spells its masks out.
    artifact = export_onnx("test_detr", tmp_path / "detr.onnx", opset=23)  # validated padded and not, as above
    ops = [n.op_type for n in onnx.load(artifact.path).graph.node]
    assert ops.count("Attention") == 3 and "Softmax" not in ops  # encoder self, decoder self and cross


def test_artifact_says_detection_only_with_its_mask(tmp_path):
    from vitexport.artifacts import ModelArtifact

    p = get_spec("test_detr").preprocess
    common = {"path": tmp_path / "m.onnx", "format": "onnx", "model": "test_detr", "preprocess": p, "num_classes": 4}
    assert ModelArtifact(**common).task == "classification"  # what sidecars without the field mean
    for task, mask in (("detection", None), ("classification", "pixel_mask")):
        with pytest.raises(ValueError, match="mask input"):
            ModelArtifact(**common, task=task, mask_name=mask)


def test_hugging_face_detr_resnet101_maps_onto_ours(transformers):
    # On the meta device: every tensor of transformers' DETR-R101 (timm's ResNet-101) names one of ours, same shape.
    with torch.device("meta"):
        reference = transformers.DetrForObjectDetection(transformers.DetrConfig(num_labels=91, backbone="resnet101"))
        ours = get_spec("detr_resnet101").build()
    mapped = get_spec("detr_resnet101").checkpoint_filter(hub_names(reference.state_dict()), ours)
    target = ours.state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
