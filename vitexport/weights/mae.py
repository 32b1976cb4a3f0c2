"""The MAE checkpoint filter.

Fine-tuned classifiers (the official `mae_finetuned_vit_*.pth`, `{"model": ...}` already unwrapped; timm state dicts
of a `global_pool="avg"` ViT) use timm's names and load as ViT's do (Hugging Face naming, position embeddings
resampled to the input size: `vitexport.weights.vit`).

Pretrained encoders have no classifier and end in a final `norm` instead of fc_norm: the official
`mae_pretrain_vit_*.pth` (`cls_token, pos_embed, patch_embed.*, blocks.*, norm.*`), timm's `vit_*.mae`, Hugging
Face `ViTMAEModel` (`embeddings.*, encoder.layer.*|layers.*, layernorm.*`) and `ViTMAEForPreTraining` (`vit.`
prefix, plus a decoder). They load only into a model without classifier (`create_model(..., head="features")`),
exactly as the MAE authors start fine-tuning and linear probing from them (`main_finetune.py` with global_pool:
the encoder's `norm` is deleted, a new fc_norm starts as LayerNorm's identity affine): `norm` is dropped and
fc_norm is set to weight 1, bias 0, so the embedding is the standardised mean of the patch tokens. The decoder
and the mask token, used only for pre-training, are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from vitexport.errors import CheckpointError
from vitexport.weights import vit

# Pre-training only: the official decoder (decoder_embed, decoder_blocks, decoder_norm, decoder_pred,
# decoder_pos_embed, mask_token) and Hugging Face's (`decoder.*`).
_PRETRAINING = ("decoder", "mask_token")


def checkpoint_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fine-tuned MAE classifiers, and pretrained MAE encoders into a model without classifier -> `model`'s."""
    sd = {k: v for k, v in sd.items() if not k.removeprefix("vit.").startswith(_PRETRAINING)}
    sd = vit.checkpoint_filter(sd, model)
    target = model.state_dict()
    if "norm.weight" in sd and "fc_norm.weight" not in sd and "fc_norm.weight" in target:
        if "head.weight" in target:
            raise CheckpointError(
                "this is a pretrained MAE encoder (no classifier, no fc_norm): load it with --head features, or "
                "pass a fine-tuned checkpoint (mae_finetuned_vit_*.pth) for logits"
            )
        width = sd["norm.weight"].shape
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
        sd["fc_norm.weight"], sd["fc_norm.bias"] = torch.ones(width), torch.zeros(width)
    return sd
