"""BEiT beyond the family contract (tests/test_families_contract.py: parity with timm and Hugging Face at 64 px, the
features head, export, fusion): the relative position index, official and Hub checkpoint layouts (every parameter
perturbed, so zero-initialised relative position tables and layer scales cannot hide indexing bugs), input-size
resampling, and the relative position bias through attention fusion."""

import numpy as np
import onnx
import pytest
import torch
from _parity import assert_same, perturbed
from _references import hf_beit, timm_beit

from vitexport.errors import CheckpointError
from vitexport.export.onnx import export_onnx
from vitexport.models import create_model, get_spec
from vitexport.models.beit import BeitConfig, build_beit, relative_position_index
from vitexport.ort import ort_session
from vitexport.weights import load_state_dict
from vitexport.weights.beit import resize_rel_pos_bias_table

SPEC = get_spec("test_beit")
FILTER = SPEC.checkpoint_filter


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


def test_registry_entries():
    assert get_spec("beit_base").name == "beit_base_patch16_224"
    assert get_spec("beit_base_patch16_224").hub_id == "beit_base_patch16_224.in22k_ft_in22k_in1k"
    base, base_384 = get_spec("beit_base_patch16_224").preprocess, get_spec("beit_base_patch16_384").preprocess
    assert (base.mean, base.std, base.crop_pct, base.interpolation) == ((0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert (base_384.input_size, base_384.crop_pct) == (384, 1.0)
    assert get_spec("beit_large_patch16_224").arch.init_values == 1e-5


def test_onnx_opset_23_fuses_attention_with_the_bias(tmp_path):
    artifact = export_onnx("test_beit", tmp_path / "beit.onnx", opset=23)
    ops = [n.op_type for n in onnx.load(artifact.path).graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops  # one per block, the bias as its mask


@pytest.fixture(scope="module")
def explicit_export(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "beit_explicit.onnx"
    return export_onnx("test_beit", out, checkpoint=tiny("test_beit").checkpoint, attention="explicit")


@pytest.mark.parametrize("target", ["ort", "onnx"])
def test_fused_attention_of_the_explicit_export_keeps_no_softmax_and_matches(tmp_path, tiny, explicit_export, target):
    # The relative position bias rides along as the fused op's additive mask: MultiHeadAttention's attention_bias
    # (ort), Attention's attn_mask (onnx, opset 23). The contract fuses the default (SDPA) export; this is the
    # explicit matmul-softmax-matmul graph.
    from vitexport.export.fusion import Fusion, attention_audit, fuse, op_counts

    source = tiny("test_beit").model
    assert op_counts(onnx.load(explicit_export.path))["Softmax"] == 2  # what there is to fuse
    fused, _ = fuse(onnx.load(explicit_export.path), Fusion(target))
    assert attention_audit(op_counts(fused), Fusion(target)) == {"fused_attention": 2, "softmax": 0}
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    x = torch.randn(3, 3, 64, 64)
    (got,) = ort_session(path).run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(got, source(x).numpy(), atol=1e-4, rtol=0)
