"""Checkpoint loading, and parity with independent implementations: timm's and Hugging Face's randomly initialised
models, loaded into ours, must give the same logits (max abs diff <= 1e-5 in fp32)."""

import pytest
import torch
from safetensors.torch import save_file

from vitexport.errors import CheckpointError
from vitexport.models import create_model, get_spec
from vitexport.weights import load_state_dict, resample_pos_embed

PARITY_ATOL = 1e-5


def assert_same_logits(ours, reference, img_size, batch=2):
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.inference_mode():
        expected, got = reference(x), ours(x)
    assert (got - expected).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize(
    "name",
    [
        "vit_tiny_patch16_224",
        "deit_tiny_patch16_224",
        "deit_tiny_distilled_patch16_224",
        "resnet18",
        pytest.param("resnet50", marks=pytest.mark.slow),
    ],
)
def test_parity_with_timm(timm, name):
    reference = timm.create_model(name, pretrained=False).eval()
    ours = create_model(name)
    load_state_dict(ours, reference.state_dict(), "timm", get_spec(name).checkpoint_filter)
    assert_same_logits(ours, reference, get_spec(name).img_size)


def test_parity_with_timm_at_another_input_size(timm):
    # timm resamples pos_embed itself when built at 256; ours resamples the 224 checkpoint on load.
    reference_224 = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    reference_256 = timm.create_model(
        "deit_tiny_patch16_224", pretrained=False, img_size=256, pretrained_strict=False
    ).eval()
    sd = reference_224.state_dict()
    sd_256 = dict(sd, pos_embed=timm.layers.resample_abs_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1))
    reference_256.load_state_dict(sd_256)
    ours = create_model("deit_tiny", img_size=256)
    load_state_dict(ours, sd, checkpoint_filter=get_spec("deit_tiny").checkpoint_filter)
    assert_same_logits(ours, reference_256, 256)


def _hf_config(transformers, cls, spec):
    a = spec.arch
    return getattr(transformers, cls)(
        hidden_size=a.embed_dim,
        num_hidden_layers=a.depth,
        num_attention_heads=a.num_heads,
        intermediate_size=int(a.embed_dim * a.mlp_ratio),
        image_size=spec.img_size,
        patch_size=a.patch_size,
        num_labels=a.num_classes,
        layer_norm_eps=1e-6,
    )


def test_parity_with_hugging_face_vit(transformers):
    spec = get_spec("test_vit")
    reference = transformers.ViTForImageClassification(_hf_config(transformers, "ViTConfig", spec)).eval()
    ours = create_model("test_vit")
    load_state_dict(ours, reference.state_dict(), "transformers", spec.checkpoint_filter)
    assert_same_logits(ours, lambda x: reference(pixel_values=x).logits, spec.img_size)


def test_parity_with_hugging_face_distilled_deit(transformers):
    spec = get_spec("test_deit_distilled")
    config = _hf_config(transformers, "DeiTConfig", spec)
    reference = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    ours = create_model("test_deit_distilled")
    load_state_dict(ours, reference.state_dict(), "transformers", spec.checkpoint_filter)
    assert_same_logits(ours, lambda x: reference(pixel_values=x).logits, spec.img_size)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = reference(pixel_values=x)
        cls_logits, dist_logits = ours.forward_heads(x)
    torch.testing.assert_close(cls_logits, out.cls_logits, atol=PARITY_ATOL, rtol=0)
    torch.testing.assert_close(dist_logits, out.distillation_logits, atol=PARITY_ATOL, rtol=0)


def _hub_naming(sd):
    """Our state dict in the naming of the ViT checkpoints on the Hugging Face Hub (transformers 4)."""
    out = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"]}
    for kind in ("weight", "bias"):
        out[f"vit.embeddings.patch_embeddings.projection.{kind}"] = sd[f"patch_embed.proj.{kind}"]
        out[f"vit.layernorm.{kind}"] = sd[f"norm.{kind}"]
        out[f"classifier.{kind}"] = sd[f"head.{kind}"]
        for i in range(2):
            hf, ours = f"vit.encoder.layer.{i}", f"blocks.{i}"
            q, k, v = sd[f"{ours}.attn.qkv.{kind}"].chunk(3)
            out |= {f"{hf}.attention.attention.query.{kind}": q, f"{hf}.attention.attention.key.{kind}": k}
            out[f"{hf}.attention.attention.value.{kind}"] = v
            out[f"{hf}.attention.output.dense.{kind}"] = sd[f"{ours}.attn.proj.{kind}"]
            out[f"{hf}.layernorm_before.{kind}"] = sd[f"{ours}.norm1.{kind}"]
            out[f"{hf}.layernorm_after.{kind}"] = sd[f"{ours}.norm2.{kind}"]
            out[f"{hf}.intermediate.dense.{kind}"] = sd[f"{ours}.mlp.fc1.{kind}"]
            out[f"{hf}.output.dense.{kind}"] = sd[f"{ours}.mlp.fc2.{kind}"]
    return out


def test_hub_checkpoint_naming_in_a_safetensors_file(tmp_path):
    source = create_model("test_vit")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _hub_naming(source.state_dict()).items()}, path)
    loaded = create_model("test_vit", checkpoint=str(path))
    assert_same_logits(loaded, source, 64)


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"model": sd, "epoch": 300}], ids=["timm", "official"])
def test_pth_checkpoints(tmp_path, wrap):
    source = create_model("test_deit_distilled")
    path = tmp_path / "checkpoint.pth"
    torch.save(wrap(source.state_dict()), path)
    assert_same_logits(create_model("test_deit_distilled", checkpoint=str(path)), source, 64)


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*notes.pth: not a PyTorch checkpoint \("):
        create_model("test_vit", checkpoint=str(path))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": create_model("test_vit").state_dict(), "hook": print}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model("test_vit", checkpoint=str(path))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    sd = create_model("test_vit").state_dict()
    del sd["norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(create_model("test_vit"), sd)
    message = str(e.value)
    assert "missing norm.weight" in message
    assert "unexpected extra.weight" in message
    assert "mis-shaped head.weight (10, 64) vs (1000, 64)" in message
    assert "\n" not in message


def test_wrong_family_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(create_model("test_resnet").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit VisionTransformer: missing cls_token"):
        create_model("test_vit", checkpoint=str(path))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_unreadable_checkpoint(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model("test_vit", checkpoint=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        create_model("test_vit", checkpoint=str(tmp_path / "absent.pth"))


def test_a_checkpoint_that_is_a_fifo_is_refused_by_its_type(tmp_path):
    """A FIFO was "checkpoint not found" to loading, and hashing it (the export's metadata, the gate's check) waited in
    open() for ever."""
    import os

    from vitexport.weights import read_state_dict, sha256_file

    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    for read in (read_state_dict, sha256_file):
        with pytest.raises(CheckpointError, match=f"checkpoint {fifo} is a FIFO: only regular files are read"):
            read(fifo)


def test_pos_embed_resampling_keeps_prefix_and_smooth_grid():
    grid = torch.linspace(0, 1, 14).repeat(14, 1)  # a ramp along x
    pos = torch.cat([torch.full((2, 1), 7.0), grid.reshape(196, 1)]).reshape(1, 198, 1).expand(1, 198, 4)
    out = resample_pos_embed(pos, 2 + 24 * 24, num_prefix_tokens=2)
    assert out.shape == (1, 578, 4)
    assert (out[:, :2] == 7.0).all()
    ramp = out[0, 2:, 0].reshape(24, 24)
    assert torch.all(ramp[:, 1:] >= ramp[:, :-1] - 1e-4)  # still increasing along x
    with pytest.raises(CheckpointError, match="square grid"):
        resample_pos_embed(pos[:, :100], 2 + 24 * 24, num_prefix_tokens=2)


def test_pretrained_fails_clearly_offline(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub.constants")
    # huggingface_hub reads HF_HUB_OFFLINE from the environment once, at import: setting the variable here would be
    # ignored and the download would try the network (and fail slowly, or succeed on a connected machine). Its
    # constants are read at call time. An empty cache keeps a previously downloaded copy from being found.
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        CheckpointError, match=r"cannot download timm/deit_tiny_patch16_224\.fb_in1k.*--checkpoint"
    ) as e:
        create_model("deit_tiny", pretrained=True)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).endswith("may be offline: pass --checkpoint PATH")
    with pytest.raises(CheckpointError, match="no published weights"):
        create_model("test_vit", pretrained=True)
