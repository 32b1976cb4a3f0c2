"""Model families, one file each, and model creation.

Importing this package imports every family, and each family registers its variants (timm's order: the registry
below knows nothing of the families). Look models up here, not in `vitexport.registry`, so they are registered.
A new family is one module here that registers its variants, one import below, and its checkpoint filter in
`vitexport/weights/` (named by its ModelSpec).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport import weights
from vitexport.errors import VitExportError
from vitexport.models import (  # noqa: F401  (importing a family registers its variants)
    beit,
    deit,
    detr,
    mae,
    mobilevit,
    resnet,
    swin,
    vit,
)
from vitexport.registry import ModelSpec, get_spec, list_models
from vitexport.tasks.base import FEATURES_HEAD, LOGITS_HEAD

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HEADS", "ModelSpec", "create_model", "get_spec", "list_models"]

# What a model outputs: its classifier's logits, or the pooled embedding that classifier would see.
HEADS = (LOGITS_HEAD, FEATURES_HEAD)


def create_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    attention: str = "sdpa",
    head: str = LOGITS_HEAD,
    num_classes: int | None = None,
) -> nn.Module:
    """Build a registered model in eval mode, with weights from a checkpoint file or timm's hub weights.

    `head="features"` builds the model without its classifier (the model's `remove_head()`): it returns the pooled
    representation the classifier would see, (B, model.num_features), instead of logits. The checkpoint's
    classifier weights (exactly the keys `remove_head()` took away: `head.*`, DeiT's `head_dist.*`) are then
    ignored when present and not required when absent, so checkpoints without a classifier load: pretrained
    encoders such as MAE's (whose family filter maps their remaining layout). Every other key is still checked
    strictly. A family offers features by giving its model `forward_embeddings`, `remove_head()` and
    `num_features`, as ViT, DeiT, BEiT and MAE do (Swin: the same three on its model, nothing here).

    `num_classes` gives the model a new classifier of that many classes (a detector: that many object classes, its
    logits one more for "no object"), as timm's: the checkpoint's classifier keys whose shape differs (exactly the
    keys whose shape the class count sets: `head.*`, DeiT's `head_dist.*`, `fc.*`, DETR's `class_embed.*`) are
    skipped and keep their fresh initialisation, and are not required when absent; a classifier of the same shape
    (a checkpoint fine-tuned to these classes) loads. Every other key is still checked strictly.
    """
    if head not in HEADS:
        raise VitExportError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    spec = get_spec(name).with_img_size(img_size)
    classifier: set[str] = set()
    if num_classes is not None and head == FEATURES_HEAD:
        raise VitExportError("num_classes sets the classifier, which head='features' removes: give one of them")
    if num_classes is not None:
        spec, classifier = _with_classes(spec, num_classes)
    model = spec.build(attention=attention)
    checkpoint_filter = spec.checkpoint_filter
    if classifier:
        checkpoint_filter = _fresh_unless_fitting(classifier, checkpoint_filter)
    if head == FEATURES_HEAD:
        remove_head = getattr(model, "remove_head", None)
        if remove_head is None:
            raise VitExportError(f"{spec.name} ({spec.family}) has no features head; its models output logits only")
        before = set(model.state_dict())
        remove_head()
        checkpoint_filter = _ignoring(before - set(model.state_dict()), checkpoint_filter)
    if checkpoint is not None:
        weights.load_checkpoint(model, checkpoint, checkpoint_filter)
    elif pretrained:
        weights.load_checkpoint(model, weights.download_pretrained(spec), checkpoint_filter)
    return model.eval()


def _ignoring(keys: set[str], checkpoint_filter: weights.CheckpointFilter | None) -> weights.CheckpointFilter:
    """`checkpoint_filter`, then without `keys` (the removed classifier's weights, if the checkpoint has them)."""

    def remapped(sd: dict, model: nn.Module) -> dict:
        sd = checkpoint_filter(sd, model) if checkpoint_filter is not None else sd
        return {k: v for k, v in sd.items() if k not in keys}

    return remapped


def _with_classes(spec: ModelSpec, num_classes: int) -> tuple[ModelSpec, set[str]]:
    """`spec` with a classifier of `num_classes`, and the state-dict keys whose shape that changes (the classifier's).
    The keys are found by building both models on the meta device (shapes only, no memory, milliseconds), so no
    family has to name its classifier, and no key is taken for one by a guess."""
    import torch

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise VitExportError(
            f"num_classes must be a positive integer, not {num_classes!r} (embeddings: head='features')"
        )
    if num_classes == spec.num_classes:
        return spec, set()
    new = dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, num_classes=num_classes))
    with torch.device("meta"):
        before = spec.build().state_dict()
        after = new.build().state_dict()
    return new, {k for k, v in after.items() if k in before and before[k].shape != v.shape}


def _fresh_unless_fitting(
    keys: set[str], checkpoint_filter: weights.CheckpointFilter | None
) -> weights.CheckpointFilter:
    """`checkpoint_filter`, then the model's own fresh values for those of `keys` (the new classifier) that the
    checkpoint lacks or has in another shape: timm's `num_classes` with pretrained weights."""

    def remapped(sd: dict, model: nn.Module) -> dict:
        sd = checkpoint_filter(sd, model) if checkpoint_filter is not None else sd
        own = model.state_dict()
        return sd | {k: own[k] for k in keys if k not in sd or sd[k].shape != own[k].shape}

    return remapped
