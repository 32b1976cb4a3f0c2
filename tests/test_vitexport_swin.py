"""Swin beyond the family contract (tests/test_families_contract.py: parity at 64 px, export, fusion): parity with
timm at input sizes that pad, clamp or drop windows (every parameter perturbed, so zero-initialised relative position
tables cannot hide an indexing bug), the official and Hub checkpoint layouts, pooling and the shift masks."""

import re

import pytest
import torch
from _parity import PARITY_ATOL, max_diff, perturbed
from _references import hf_swin, timm_swin
from torch.utils.flop_counter import FlopCounterMode

from vitexport.errors import CheckpointError
from vitexport.models import create_model, get_spec
from vitexport.weights import load_state_dict


@pytest.mark.parametrize(
    "img_size",
    # 72: 18x18 and 9x9 maps padded to whole windows, odd merge; 32: stage 2's 4x4 map is one unshifted window;
    # 24: stage 1 pads 6x6 to 8x8 and shifts, stage 2's window shrinks to its 3x3 map (timm builds it so too).
    [72, 32, 24],
)
def test_parity_with_timm_at_other_input_sizes(timm, img_size):
    reference = timm_swin(timm, img_size)
    ours = create_model("test_swin", img_size=img_size)
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("test_swin").checkpoint_filter)
    assert max_diff(ours, reference, img_size) <= PARITY_ATOL
    assert sum(p.numel() for p in ours.parameters()) == get_spec("test_swin").with_img_size(img_size).num_params


@pytest.mark.slow
def test_parity_with_timm_swin_tiny(timm):
    reference = perturbed(timm.create_model("swin_tiny_patch4_window7_224"))
    ours = create_model("swin_tiny_patch4_window7_224")
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("swin_tiny").checkpoint_filter)
    assert max_diff(ours, reference, 224, batch=1) <= PARITY_ATOL


@pytest.mark.parametrize("img_size", [72, 24])
def test_params_and_macs_at_other_input_sizes(img_size):
    # 72: padded windows and an odd patch merging; 24: stage 2's 3x3 map is one window of 3, whose relative
    # position table shrinks to 5x5.
    spec = get_spec("test_swin").with_img_size(img_size)
    with torch.device("meta"):
        model = spec.build()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    assert counter.get_total_flops() == 2 * spec.macs()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


def test_checkpoint_loads_where_the_model_clamps_a_window():
    # At 24 px stage 2's map is 3x3, so its window (and relative position table) shrinks from 4 (7x7) to 3 (5x5).
    sd = create_model("test_swin").state_dict()
    heads = get_spec("test_swin").arch.num_heads[1]
    dy = torch.arange(-3.0, 4.0).reshape(7, 1, 1).expand(7, 7, heads)  # the row offset of every table entry
    table = (torch.arange(heads) + 0.1 * dy).reshape(49, heads)  # head h: h + 0.1·dy
    sd = {k: table.clone() if k.startswith("layers.1.") and k.endswith("bias_table") else v for k, v in sd.items()}
    model = create_model("test_swin", img_size=24)
    load_state_dict(model, sd, "a 64 px checkpoint", get_spec("test_swin").checkpoint_filter)
    got = model.state_dict()
    resized = got["layers.1.blocks.1.attn.relative_position_bias_table"].reshape(5, 5, heads)
    torch.testing.assert_close(resized[2, 2], torch.arange(heads, dtype=torch.float32))  # offset 0 stays put
    assert (resized[1:, 2] > resized[:-1, 2]).all() and (resized[0, 2] > table.reshape(7, 7, heads)[0, 3]).all()
    stage1 = "layers.0.blocks.1.attn.relative_position_bias_table"
    torch.testing.assert_close(got[stage1], sd[stage1])  # stage 1 keeps its window
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randn(1, 3, 24, 24))).all()


def official_layout(sd, *, buffers_from=None):
    """A timm state dict in the official releases' layout: each stage's patch merging at the end of the previous
    stage, the classifier as `head`, and (optionally) the saved relative position index and attention masks."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)
        out[key.replace("head.fc.", "head.")] = value
    if buffers_from is not None:
        # Garbage of the right shapes: the filter must drop these, not load them. The official blocks keep the mask
        # beside their attention (`blocks.M.attn_mask`), the index inside it.
        for key, value in buffers_from.named_buffers():
            if key.endswith("relative_position_index"):
                out[key] = torch.full_like(value, 7)
            elif key.endswith("attn.attn_mask"):
                out[key.replace("attn.attn_mask", "attn_mask")] = torch.full_like(value, 7)
    return out


@pytest.mark.parametrize("with_buffers", [False, True], ids=["no_buffers", "buffers"])
def test_official_checkpoint_layout(tmp_path, timm, with_buffers):
    reference = timm_swin(timm)
    sd = official_layout(reference.state_dict(), buffers_from=create_model("test_swin") if with_buffers else None)
    assert "layers.0.downsample.reduction.weight" in sd and "head.weight" in sd
    assert with_buffers == ("layers.0.blocks.1.attn_mask" in sd)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": sd, "epoch": 300}, path)
    assert max_diff(create_model("test_swin", checkpoint=str(path)), reference, 64) <= PARITY_ATOL


# transformers 5 module names -> the transformers 4 names the Swin checkpoints on the Hugging Face Hub carry.
_HUB_NAMES = [
    ("attention.q_proj", "attention.self.query"),
    ("attention.k_proj", "attention.self.key"),
    ("attention.v_proj", "attention.self.value"),
    ("attention.relative_position_bias.", "attention.self."),
    ("attention.o_proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
]


def test_hub_checkpoint_naming_in_a_safetensors_file(tmp_path, transformers):
    from safetensors.torch import save_file

    reference = hf_swin(transformers)
    sd = {}
    for key, value in reference.state_dict().items():
        for new, old in _HUB_NAMES:
            key = key.replace(new, old)
        sd[key] = value.contiguous()
        if key.endswith("relative_position_bias_table"):  # the Hub files also hold the index buffer
            n = get_spec("test_swin").arch.window_size ** 2
            sd[key.replace("bias_table", "index")] = torch.zeros(n, n, dtype=torch.long)
    assert "swin.encoder.layers.0.blocks.1.attention.self.query.weight" in sd
    path = tmp_path / "model.safetensors"
    save_file(sd, path)
    loaded = create_model("test_swin", checkpoint=str(path))
    assert max_diff(loaded, lambda x: reference(pixel_values=x).logits, 64) <= PARITY_ATOL


def test_hugging_face_checkpoint_without_a_value_projection(transformers):
    sd = {k: v for k, v in hf_swin(transformers).state_dict().items() if "blocks.1.attention.v_proj" not in k}
    with pytest.raises(CheckpointError, match=r"layers\.0\.blocks\.1 has only \['k', 'q'\] of its query/key/value"):
        load_state_dict(create_model("test_swin"), sd, "transformers", get_spec("test_swin").checkpoint_filter)


def test_pooled_features_are_what_the_classifier_sees():
    model = create_model("test_swin")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        logits = model(x)
        head_of_pooled = model.head.fc(pooled)
    assert tokens.shape == (2, 8, 8, model.num_features)  # stage 2's map, channels last
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, tokens.mean(dim=(1, 2)))
    torch.testing.assert_close(head_of_pooled, logits)


def test_shifted_blocks_mask_and_unshifted_blocks_do_not():
    model = create_model("test_swin")
    masks = [b.attn.attn_mask for stage in model.layers for b in stage.blocks]
    assert [m is None for m in masks] == [True, False, True, False]
    assert masks[1].shape == (16, 16, 16)  # 4x4 windows of 16 tokens on the 16x16 map
    assert (masks[1][0] == 0).all()  # the top-left window holds one region: nothing masked
    assert (masks[1][-1] == -100).any()  # the bottom-right one joins the wrapped-around regions
    assert all(b.attn.attn_mask is None for b in create_model("test_swin", img_size=32).layers[1].blocks)
