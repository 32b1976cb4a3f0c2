"""Model families, one file each, and model creation.

Importing this package imports every family, and each family registers its variants (timm's order: the registry
below knows nothing of the families). Look models up here, not in `vitexport.registry`, so they are registered.
A new family is one module here that registers its variants, one import below, and its checkpoint filter in
`vitexport/weights/` (named by its ModelSpec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitexport import weights
from vitexport.models import deit, mobilevit, resnet, swin, vit  # noqa: F401  (importing a family registers its variants)
from vitexport.registry import ModelSpec, get_spec, list_models

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models"]


def create_model(
    name: str,
    *,
    checkpoint: str | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    attention: str = "sdpa",
) -> nn.Module:
    """Build a registered model in eval mode, with weights from a checkpoint file or timm's hub weights."""
    spec = get_spec(name).with_img_size(img_size)
    model = spec.build(attention=attention)
    if checkpoint is not None:
        weights.load_checkpoint(model, checkpoint, spec.checkpoint_filter)
    elif pretrained:
        weights.load_checkpoint(model, weights.download_pretrained(spec), spec.checkpoint_filter)
    return model.eval()
