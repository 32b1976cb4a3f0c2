"""The DETR checkpoint filter: the official facebookresearch/detr releases and Hugging Face `DetrForObjectDetection`
naming -> ours.

Our names are the official ones but two (`vitexport.models.detr` says why): the backbone (`backbone.0.body.` ->
`backbone.`) and attention's fused `in_proj_weight`/`in_proj_bias`, split here into `q_proj`, `k_proj`, `v_proj`
(nn.MultiheadAttention's order). Hugging Face keeps Q, K and V apart as we do and names its backbone either after timm
(`use_timm_backbone=True`, the Hub's facebook/detr-resnet-50: torchvision's names) or after its own ResNet
(`use_timm_backbone=False`: `embedder.`, `encoder.stages.`), mapped here to torchvision's. transformers 4 names
(the Hub checkpoints: `backbone.conv_encoder.model.`, `out_proj`, `fc1`) and transformers 5 names
(`backbone.model.`, `o_proj`, `mlp.fc1`) both load. Frozen BatchNorm has no `num_batches_tracked`: dropped.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_HF_BACKBONE = r"^model\.backbone\.(?:conv_encoder\.)?model\."
_HF_TOP = {
    "model.input_projection.": "input_proj.",
    "model.query_position_embeddings.": "query_embed.",
    "model.decoder.layernorm.": "transformer.decoder.norm.",
    "class_labels_classifier.": "class_embed.",
    "bbox_predictor.": "bbox_embed.",
}
# Per layer, Hugging Face -> official; the encoder's final_layer_norm is its second norm, the decoder's its third.
_HF_LAYER = {
    "self_attn.out_proj": "self_attn.out_proj",
    "self_attn.o_proj": "self_attn.out_proj",
    "encoder_attn.out_proj": "multihead_attn.out_proj",
    "encoder_attn.o_proj": "multihead_attn.out_proj",
    "self_attn_layer_norm": "norm1",
    "encoder_attn_layer_norm": "norm2",
    "fc1": "linear1",
    "mlp.fc1": "linear1",
    "fc2": "linear2",
    "mlp.fc2": "linear2",
}
_FINAL_NORM = {"encoder": "norm2", "decoder": "norm3"}


def _hf_resnet(key: str) -> str:
    """transformers' ResNetBackbone names -> torchvision's (timm's are torchvision's already)."""
    key = re.sub(r"^embedder\.embedder\.convolution\.", "conv1.", key)
    key = re.sub(r"^embedder\.embedder\.normalization\.", "bn1.", key)
    m = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return key
    block, rest = f"layer{int(m[1]) + 1}.{m[2]}", m[3]
    rest = re.sub(r"^shortcut\.convolution\.", "downsample.0.", rest)
    rest = re.sub(r"^shortcut\.normalization\.", "downsample.1.", rest)
    rest = re.sub(r"^layer\.(\d+)\.convolution\.", lambda c: f"conv{int(c[1]) + 1}.", rest)
    rest = re.sub(r"^layer\.(\d+)\.normalization\.", lambda c: f"bn{int(c[1]) + 1}.", rest)
    return f"{block}.{rest}"


def _from_hugging_face(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if m := re.match(_HF_BACKBONE, key):
            out["backbone." + _hf_resnet(key[m.end() :])] = value
            continue
        top = next((p for p in _HF_TOP if key.startswith(p)), None)
        if top is not None:
            out[_HF_TOP[top] + key[len(top) :]] = value
            continue
        m = re.match(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None:
            out[key] = value  # not DETR's: reported as unexpected by the strict load
            continue
        stack, index, module, kind = m.groups()
        layer = f"transformer.{stack}.layers.{index}"
        if q := re.match(r"^(self_attn|encoder_attn)\.([qkv]_proj)$", module):
            attn = "self_attn" if q[1] == "self_attn" else "multihead_attn"
            out[f"{layer}.{attn}.{q[2]}.{kind}"] = value
        elif module == "final_layer_norm":
            out[f"{layer}.{_FINAL_NORM[stack]}.{kind}"] = value
        else:
            out[f"{layer}.{_HF_LAYER.get(module, module)}.{kind}"] = value
    return out


def _split_in_proj(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nn.MultiheadAttention's `<attn>.in_proj_weight` (3D, D) and `in_proj_bias` (3D,) -> `<attn>.{q,k,v}_proj.*`.
    A matrix whose rows do not split in three is kept whole: the strict load reports it as unexpected."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"^(.+)\.in_proj_(weight|bias)$", key)
        if m is None or value.dim() == 0 or value.shape[0] % 3:
            out[key] = value
            continue
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
            out[f"{m[1]}.{name}.{m[2]}"] = part
    return out


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official releases (already unwrapped from {"model": ...}), Hugging Face naming and our own -> `model`'s."""
    if any(re.match(_HF_BACKBONE, k) or k.startswith("class_labels_classifier.") for k in sd):
        sd = _from_hugging_face(sd)
    sd = {re.sub(r"^backbone\.0\.body\.", "backbone.", k): v for k, v in _split_in_proj(sd).items()}
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
