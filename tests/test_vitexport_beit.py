"""BEiT: parity with timm's and Hugging Face's models (every parameter perturbed, so zero-initialised relative
position tables and layer scales cannot hide indexing bugs), official checkpoint layouts, input-size resampling,
and ONNX export of the tiny config."""

import json

import numpy as np
import onnx
import pytest
import torch
from _parity import PARITY_ATOL, assert_same, perturbed
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import CheckpointError
from vitexport.export.onnx import Heads, export_onnx
from vitexport.models import create_model, get_spec
from vitexport.models.beit import BeitConfig, build_beit, relative_position_index
from vitexport.ort import ort_session
from vitexport.weights import load_state_dict
from vitexport.weights.beit import resize_rel_pos_bias_table

SPEC = get_spec("test_beit")
FILTER = SPEC.checkpoint_filter


def timm_beit(timm, img_size=64, **kwargs):
    args = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, use_abs_pos_emb=False, use_rel_pos_bias=True)
    return timm.models.beit.Beit(img_size=img_size, init_values=0.1, **(args | kwargs))


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


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_parity_with_timm(timm, attention):
    reference = perturbed(timm_beit(timm))
    ours = create_model("test_beit", attention=attention)
    load_state_dict(ours, reference.state_dict(), "timm", FILTER)
    assert_same(ours, reference)


def test_relative_position_index_matches_timm(timm):
    for grid in (1, 4, 14, 24):  # tiny, 224 px and 384 px grids
        expected = timm.models.beit.gen_relative_position_index((grid, grid))
        assert torch.equal(relative_position_index(grid), expected)


def test_index_is_rebuilt_never_read_from_a_checkpoint(timm):
    reference = perturbed(timm_beit(timm))
    sd = reference.state_dict()
    assert not any("relative_position_index" in k for k in sd)  # timm: non-persistent, and so is ours
    ours = create_model("test_beit")
    assert not any("relative_position_index" in k for k in ours.state_dict())
    # Official checkpoints carry the index; a wrong one must not be used.
    stale = {f"blocks.{i}.attn.relative_position_index": torch.zeros(17, 17, dtype=torch.long) for i in range(2)}
    load_state_dict(ours, sd | stale, "official", FILTER)
    assert_same(ours, reference)


@pytest.mark.parametrize("per_block", [False, True], ids=["shared", "shared+per-block"])
def test_official_checkpoint_with_shared_relative_position_bias(timm, tmp_path, per_block):
    # timm's shared-bias BEiT has the official release's names (rel_pos_bias.*); the official files also keep
    # the index buffers and wrap everything in {"model": ...}.
    reference = perturbed(timm_beit(timm, use_rel_pos_bias=per_block, use_shared_rel_pos_bias=True))
    sd = dict(reference.state_dict())
    assert "rel_pos_bias.relative_position_bias_table" in sd
    sd["rel_pos_bias.relative_position_index"] = relative_position_index(4)
    path = tmp_path / "beit_official.pth"
    torch.save({"model": sd, "epoch": 30, "args": "namespace"}, path)
    assert_same(create_model("test_beit", checkpoint=str(path)), reference)


def test_parity_with_hugging_face(transformers):
    reference = hf_beit(transformers)
    ours = create_model("test_beit")
    load_state_dict(ours, reference.state_dict(), "transformers", FILTER)
    assert_same(ours, lambda x: reference(pixel_values=x).logits)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        pooled = reference.beit(pixel_values=x).pooler_output
        assert (ours.forward_embeddings(x) - pooled).abs().max().item() <= PARITY_ATOL


def _transformers4_naming(sd):
    """A transformers 5 BEiT state dict in the naming of the BEiT checkpoints on the Hugging Face Hub
    (transformers 4), index buffers included."""
    renames = [
        ("beit.layers.", "beit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
        (".relative_position_bias.", ".attention.attention.relative_position_bias."),
        ("beit.shared_position_bias.", "beit.encoder.relative_position_bias."),
    ]
    out = {}
    for key, value in sd.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
        if key.endswith("relative_position_bias_table"):
            out[key.replace("_bias_table", "_index")] = relative_position_index(4)
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["per-block", "shared"])
def test_hub_checkpoint_naming(transformers, shared):
    reference = hf_beit(transformers, shared=shared)
    sd = _transformers4_naming(reference.state_dict())
    assert "beit.encoder.layer.1.attention.attention.query.weight" in sd and "beit.embeddings.cls_token" in sd
    ours = create_model("test_beit")
    load_state_dict(ours, sd, "hub", FILTER)
    assert_same(ours, lambda x: reference(pixel_values=x).logits)


def test_another_input_size_resamples_like_timm(timm):
    # timm resamples the tables itself when loading a 64-px checkpoint into a 96-px model (its checkpoint filter);
    # ours resamples on load. Large table values make the bias dominate the scores.
    reference_64 = perturbed(timm_beit(timm))
    with torch.no_grad():
        for block in reference_64.blocks:
            block.attn.relative_position_bias_table.normal_()
    sd = reference_64.state_dict()
    reference_96 = timm_beit(timm, img_size=96).eval()
    reference_96.load_state_dict(timm.models.beit.checkpoint_filter_fn(sd, reference_96))
    ours = create_model("test_beit", img_size=96)
    load_state_dict(ours, sd, "timm", FILTER)
    for mine, theirs in zip(ours.blocks, reference_96.blocks, strict=True):
        assert mine.attn.relative_position_bias_table.shape == (11 * 11 + 3, 2)
        torch.testing.assert_close(
            mine.attn.relative_position_bias_table, theirs.attn.relative_position_bias_table, atol=1e-6, rtol=0
        )
    assert_same(ours, reference_96, img_size=96)


@pytest.mark.parametrize(("src", "dst"), [(4, 6), (6, 4), (14, 24)])
def test_table_resizing_matches_timm(timm, src, dst):
    table = torch.randn((2 * src - 1) ** 2 + 3, 3)
    expected = timm.layers.resize_rel_pos_bias_table(
        table, new_window_size=(dst, dst), new_bias_shape=((2 * dst - 1) ** 2 + 3, 3)
    )
    torch.testing.assert_close(resize_rel_pos_bias_table(table, dst), expected, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match="not a square offset grid"):
        resize_rel_pos_bias_table(table[:-1], dst)


def test_absolute_position_embeddings_are_resampled(timm):
    reference_64 = perturbed(timm_beit(timm, use_abs_pos_emb=True))
    sd = reference_64.state_dict()
    reference_96 = timm_beit(timm, img_size=96, use_abs_pos_emb=True).eval()
    reference_96.load_state_dict(timm.models.beit.checkpoint_filter_fn(sd, reference_96))
    cfg = BeitConfig(16, 64, 2, 2, abs_pos_embed=True)
    ours = build_beit(cfg, img_size=96).eval()
    assert sum(p.numel() for p in ours.parameters()) == cfg.num_params(96)  # registered variants: registry tests
    load_state_dict(ours, sd, "timm", FILTER)
    assert_same(ours, reference_96, img_size=96)


def test_wrong_checkpoint_is_refused(timm):
    sd = perturbed(timm_beit(timm, num_heads=4)).state_dict()  # four heads: tables of another width
    with pytest.raises(CheckpointError, match=r"mis-shaped blocks\.0\.attn\.relative_position_bias_table"):
        load_state_dict(create_model("test_beit"), sd, "timm", FILTER)


def test_features_are_timms_pre_logits(timm, tmp_path):
    reference = perturbed(timm_beit(timm))
    sd = reference.state_dict()
    with_head, without_head = tmp_path / "with_head.pth", tmp_path / "without_head.pth"
    torch.save(sd, with_head)
    torch.save({k: v for k, v in sd.items() if not k.startswith("head.")}, without_head)
    for path in (with_head, without_head):  # the classifier's weights are ignored, and not required
        ours = create_model("test_beit", head="features", checkpoint=str(path))
        assert_same(ours, lambda x: reference.forward_head(reference.forward_features(x), pre_logits=True))
    with pytest.raises(CheckpointError, match=r"missing head\.weight, head\.bias"):
        create_model("test_beit", checkpoint=str(without_head))  # logits need the classifier


def test_registry_entries():
    assert get_spec("beit_base").name == "beit_base_patch16_224"
    assert get_spec("beit_base_patch16_224").hub_id == "beit_base_patch16_224.in22k_ft_in22k_in1k"
    base, base_384 = get_spec("beit_base_patch16_224").preprocess, get_spec("beit_base_patch16_384").preprocess
    assert (base.mean, base.std, base.crop_pct, base.interpolation) == ((0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert (base_384.input_size, base_384.crop_pct) == (384, 1.0)
    assert get_spec("beit_large_patch16_224").arch.init_values == 1e-5


@pytest.fixture(scope="module")
def beit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    source = perturbed(create_model("test_beit"))
    path = tmp_path_factory.mktemp("ckpt") / "beit.pth"
    torch.save(source.state_dict(), path)
    return source, path


@pytest.mark.parametrize("heads", [Heads.avg, Heads.features])
def test_onnx_export(tmp_path, beit_checkpoint, heads):
    source, checkpoint = beit_checkpoint
    # export_onnx validates the dynamic batch axis against PyTorch at batch 1 and 4 itself.
    artifact = export_onnx("test_beit", tmp_path / "beit.onnx", checkpoint=checkpoint, heads=heads)
    assert {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4}
    session = ort_session(artifact.path)
    name = "embeddings" if heads is Heads.features else "logits"
    assert [o.name for o in session.get_outputs()] == [name]
    x = torch.randn(3, 3, 64, 64)
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        expected = source.forward_embeddings(x) if heads is Heads.features else source(x)
    assert got.shape == (3, 64 if heads is Heads.features else 1000)
    assert artifact.num_classes == got.shape[1]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)


def test_onnx_opset_23_fuses_attention_with_the_bias(tmp_path):
    artifact = export_onnx("test_beit", tmp_path / "beit.onnx", opset=23)
    ops = [n.op_type for n in onnx.load(artifact.path).graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops  # one per block, the bias as its mask


@pytest.fixture(scope="module")
def explicit_export(beit_checkpoint, tmp_path_factory):
    _, checkpoint = beit_checkpoint
    out = tmp_path_factory.mktemp("onnx") / "beit_explicit.onnx"
    return export_onnx("test_beit", out, checkpoint=checkpoint, attention="explicit")


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_fused_attention_keeps_no_softmax_and_matches(tmp_path, beit_checkpoint, explicit_export, target):
    # The relative position bias rides along as the fused op's additive mask: MultiHeadAttention's attention_bias
    # (ort), Attention's attn_mask (onnx, opset 23).
    from vitexport.export.fusion import Fusion, attention_audit, fuse, op_counts

    source, _ = beit_checkpoint
    assert op_counts(onnx.load(explicit_export.path))["Softmax"] == 2  # what there is to fuse
    fused, _ = fuse(onnx.load(explicit_export.path), Fusion(target))
    assert attention_audit(op_counts(fused), Fusion(target)) == {"fused_attention": 2, "softmax": 0}
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    x = torch.randn(3, 3, 64, 64)
    (got,) = ort_session(path).run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, source(x).numpy(), atol=1e-4, rtol=0)


def test_models_lists_the_family():
    result = CliRunner().invoke(app, ["models", "--json", "--family", "beit"])
    assert result.exit_code == 0
    assert {m["name"] for m in json.loads(result.output)} == {
        "beit_base_patch16_224",
        "beit_large_patch16_224",
        "beit_base_patch16_384",
    }
