"""MAE beyond the family contract (tests/test_families_contract.py: the fine-tuned classifier's parity with timm,
global average pooling + fc_norm, its features, export, fusion): the official releases' layouts, another input
size, and the pretrained encoders (official, timm `vit_*.mae`, Hugging Face `ViTMAEModel`) loading for
`head="features"` only, and exported so."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _parity import assert_same, perturbed
from _references import timm_mae_classifier, timm_vit

from vitexport.errors import CheckpointError
from vitexport.export.onnx import Heads, export_onnx
from vitexport.models import create_model, get_spec
from vitexport.ort import ort_session
from vitexport.weights import load_state_dict

FILTER = get_spec("test_mae").checkpoint_filter


def test_official_finetuned_release(timm, tmp_path):
    # mae_finetuned_vit_*.pth: {"model": state dict with fc_norm and head, timm's names}, plus training state.
    reference = timm_mae_classifier(timm)
    path = tmp_path / "mae_finetuned_vit_test.pth"
    torch.save({"model": reference.state_dict(), "epoch": 99, "scaler": {"scale": torch.tensor(65536.0)}}, path)
    assert_same(create_model("test_mae", checkpoint=str(path)), reference)


def test_another_input_size(timm):
    reference_64 = timm_mae_classifier(timm)
    sd = reference_64.state_dict()
    reference_96 = timm_vit(timm, 96, global_pool="avg", fc_norm=True).eval()
    pos = timm.layers.resample_abs_pos_embed(sd["pos_embed"], (6, 6), num_prefix_tokens=1)
    reference_96.load_state_dict(dict(sd, pos_embed=pos))
    ours = create_model("test_mae", img_size=96)
    load_state_dict(ours, sd, "timm", FILTER)
    assert_same(ours, reference_96, img_size=96)


def _finetuning_start(timm, encoder_sd):
    """The reference for a pretrained encoder: timm's avg-pool ViT as the MAE authors start fine-tuning it
    (main_finetune.py with global_pool: the encoder's final norm deleted, a fresh fc_norm, an unused head)."""
    model = timm_vit(timm, global_pool="avg", fc_norm=True, num_classes=0).eval()
    state = {k: v for k, v in encoder_sd.items() if not k.startswith("norm.")}
    model.load_state_dict(state | {"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)})
    return model


@pytest.mark.parametrize("with_decoder", [False, True], ids=["mae_pretrain", "mae_visualize"])
def test_official_pretrained_encoder_loads_for_features(timm, tmp_path, with_decoder):
    # mae_pretrain_vit_*.pth and timm's vit_*.mae: a token-pool ViT without head (cls_token, pos_embed, blocks, norm).
    encoder = perturbed(timm_vit(timm, num_classes=0))
    sd = dict(encoder.state_dict())
    assert "norm.weight" in sd and not any(k.startswith(("head.", "fc_norm.")) for k in sd)
    if with_decoder:  # the visualisation release keeps the pre-training decoder
        sd |= {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64)}
        sd |= {"decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.zeros(32)}
    path = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": sd}, path)
    ours = create_model("test_mae", head="features", checkpoint=str(path))
    assert_same(ours, _finetuning_start(timm, encoder.state_dict()))
    with pytest.raises(CheckpointError, match=r"pretrained MAE encoder.*--head features") as e:
        create_model("test_mae", checkpoint=str(path))
    assert "\n" not in str(e.value)


def test_an_mae_encoder_in_a_plain_vit_gives_its_class_token(timm):
    # The same encoder loads for features into a plain ViT too, whose embedding is the normed class token.
    encoder = perturbed(timm_vit(timm, num_classes=0))
    ours = create_model("test_vit", head="features")
    load_state_dict(ours, encoder.state_dict(), "timm", get_spec("test_vit").checkpoint_filter)
    assert_same(ours, lambda x: encoder.forward_head(encoder.forward_features(x), pre_logits=True))


def _hf_config(transformers):
    return transformers.ViTMAEConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        image_size=64,
        patch_size=16,
        mask_ratio=0.0,
        layer_norm_eps=1e-6,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )


@pytest.mark.parametrize("cls", ["ViTMAEModel", "ViTMAEForPreTraining"])
def test_hugging_face_pretrained_encoder_loads_for_features(transformers, tmp_path, cls):
    reference = perturbed(getattr(transformers, cls)(_hf_config(transformers)))
    encoder = reference if cls == "ViTMAEModel" else reference.vit
    path = tmp_path / "vit_mae.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("test_mae", head="features", checkpoint=str(path))

    def embedding(x):
        # Unmasked, unshuffled (noise in token order); the last block's output before the encoder's layernorm,
        # then the fine-tuning start's pooling: mean of the patch tokens, identity-affine LayerNorm.
        noise = torch.arange(16.0).expand(x.shape[0], 16)
        last = encoder(pixel_values=x, noise=noise, output_hidden_states=True).hidden_states[-1]
        return F.layer_norm(last[:, 1:].mean(dim=1), (64,), eps=1e-6)

    assert_same(ours, embedding)


def _transformers4_naming(sd):
    """A transformers 5 ViTMAEModel state dict in the naming of the MAE checkpoints on the Hugging Face Hub
    (facebook/vit-mae-*, transformers 4)."""
    renames = [
        ("layers.", "encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ]
    out = {}
    for key, value in sd.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def test_hub_checkpoint_naming(transformers, tmp_path):
    reference = perturbed(transformers.ViTMAEModel(_hf_config(transformers)))
    sd = _transformers4_naming(reference.state_dict())
    assert "encoder.layer.1.attention.attention.query.weight" in sd and "layernorm.weight" in sd
    path = tmp_path / "vit_mae_hub.pth"
    torch.save(sd, path)
    ours = create_model("test_mae", head="features", checkpoint=str(path))

    def embedding(x):
        last = reference(pixel_values=x, output_hidden_states=True).hidden_states[-1]  # any token order
        return F.layer_norm(last[:, 1:].mean(dim=1), (64,), eps=1e-6)

    assert_same(ours, embedding)


def test_registry_entries():
    assert {s.name for s in [get_spec("mae_vit_base"), get_spec("mae_vit_large"), get_spec("mae_vit_huge")]} == {
        "mae_vit_base_patch16_224",
        "mae_vit_large_patch16_224",
        "mae_vit_huge_patch14_224",
    }
    huge = get_spec("mae_vit_huge_patch14_224")
    assert (huge.arch.patch_size, huge.arch.embed_dim, huge.arch.depth, huge.arch.global_pool) == (14, 1280, 32, "avg")
    p = huge.preprocess
    assert (p.mean, p.crop_pct, p.interpolation) == ((0.485, 0.456, 0.406), 0.875, "bicubic")
    assert get_spec("mae_vit_base").hub_id == "vit_base_patch16_224.mae"


def test_onnx_export_of_a_pretrained_encoder_as_embeddings(tmp_path, timm):
    # The user's path for mae_pretrain_vit_*.pth: --head features.
    encoder = perturbed(timm_vit(timm, num_classes=0))
    checkpoint = tmp_path / "mae_pretrain.pth"
    torch.save({"model": encoder.state_dict()}, checkpoint)
    artifact = export_onnx("test_mae", tmp_path / "mae.onnx", checkpoint=checkpoint, heads=Heads.features)
    assert {r["batch_size"] for r in artifact.validation["reports"]} == {1, 4}
    assert artifact.output_names == ("embeddings",) and artifact.num_classes == 64
    session = ort_session(artifact.path)
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    x = torch.randn(3, 3, 64, 64)
    (embeddings,) = session.run(None, {"pixel_values": x.numpy()})
    with torch.inference_mode():
        expected = _finetuning_start(timm, encoder.state_dict())(x)
    assert embeddings.shape == (3, 64)
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-4, rtol=0)
