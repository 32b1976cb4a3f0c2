"""The model registry: canonical names, short aliases, preprocessing and cost of every variant.

The bottom of the model stack, as timm orders it: this module imports nothing above it. Each family module in
`vitexport.models` registers its variants when imported, and `vitexport.models` imports every family, so look
models up through `vitexport.models` (`get_spec`, `list_models`, `create_model`), which guarantees they are there.

Like timm's registry, each variant keeps its pretrained preprocessing config beside its registration; unlike
timm, a variant is data (a frozen `ModelSpec` holding its family's config), so its parameter count and MACs are
known without building it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vitexport.errors import UnknownModelError, VitExportError
from vitexport.preprocess import PreprocessConfig
from vitexport.tasks import TASKS

if TYPE_CHECKING:
    from torch import nn


# --img-size bounds: the papers' largest inputs are 384-518 px (1333 for detection); a ViT at 100000 px would ask for
# hundreds of GB before the first error.
MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 2048


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant. `arch` is its family's frozen config (ViTConfig, ResNetConfig)."""

    name: str
    family: str
    arch: Any
    preprocess: PreprocessConfig
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    hub_id: str | None = None  # timm's Hugging Face Hub weights, for --pretrained
    aliases: tuple[str, ...] = ()
    for_tests: bool = False
    # Remaps foreign checkpoint layouts onto this model (timm's checkpoint_filter_fn); None: timm's names only.
    checkpoint_filter: Callable[[dict, nn.Module], dict] | None = field(default=None, repr=False, compare=False)
    task: str = "classification"  # what the model does: a name in vitexport.tasks.TASKS

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")

    @property
    def img_size(self) -> int:
        return self.preprocess.input_size

    @property
    def distilled(self) -> bool:
        return bool(getattr(self.arch, "distilled", False))

    @property
    def num_classes(self) -> int:
        """Classifiers: their logits. Detectors: the object classes, without the logits' extra "no object"."""
        return self.arch.num_classes

    @property
    def num_params(self) -> int:
        return self.arch.num_params(self.img_size)

    def macs(self, img_size: int | None = None) -> int:
        """Multiply-accumulates of one image's forward pass (matmuls and convolutions, as FLOP counters count)."""
        return self.arch.macs(img_size or self.img_size)

    def with_img_size(self, img_size: int | None) -> ModelSpec:
        if img_size is None or img_size == self.img_size:
            return self
        if not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
            # Checked before anything is built: 100000 px would ask a ViT for hundreds of GB.
            raise VitExportError(f"--img-size must be {MIN_IMG_SIZE}..{MAX_IMG_SIZE} pixels, not {img_size}")
        patch = getattr(self.arch, "patch_size", None)  # ViT, DeiT, MAE, BEiT, Swin: the patch grid must tile it
        if isinstance(patch, int) and img_size % patch:
            # A strided patch embedding would drop the last pixels without a word (timm refuses such sizes too).
            raise VitExportError(f"--img-size must be a multiple of {self.name}'s patch size {patch}, not {img_size}")
        return replace(self, preprocess=replace(self.preprocess, input_size=img_size))

    def build(self, **kwargs: Any) -> nn.Module:
        return self.builder(self.arch, img_size=self.img_size, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "task": self.task,
            "aliases": list(self.aliases),
            "distilled": self.distilled,
            "num_classes": self.num_classes,
            "params": self.num_params,
            "gmacs": round(self.macs() / 1e9, 3),
            "preprocess": self.preprocess.to_dict(),
            "hub_id": self.hub_id,
        }


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    for key in (spec.name, *spec.aliases):
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"model name {key!r} registered twice")
    _REGISTRY[spec.name] = spec
    _ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def list_models(*, include_test: bool = False) -> list[ModelSpec]:
    """Every registered variant's spec, in registration order; `include_test`: the tiny test models too."""
    return [s for s in _REGISTRY.values() if include_test or not s.for_tests]


def get_spec(name: str) -> ModelSpec:
    """The spec for a canonical name or alias; unknown names get close-name suggestions."""
    canonical = _ALIASES.get(name, name)
    if canonical in _REGISTRY:
        return _REGISTRY[canonical]
    close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `vitexport models` lists them"
    raise UnknownModelError(f"unknown model {name!r}{hint}")
