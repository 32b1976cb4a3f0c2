"""The model registry: canonical names, short aliases, preprocessing and cost of every variant.

Like timm's registry, each variant keeps its pretrained preprocessing config beside its registration; unlike
timm, a variant is data (a frozen `ModelSpec` holding its family's config), so its parameter count and MACs are
known without building it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vitexport.errors import UnknownModelError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the ViT (AugReg) checkpoints normalise to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input: resize the short side to input_size / crop_pct, center crop."""

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
        )


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

    @property
    def img_size(self) -> int:
        return self.preprocess.input_size

    @property
    def distilled(self) -> bool:
        return bool(getattr(self.arch, "distilled", False))

    @property
    def num_classes(self) -> int:
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
        return replace(self, preprocess=replace(self.preprocess, input_size=img_size))

    def build(self, **kwargs: Any) -> nn.Module:
        return self.builder(self.arch, img_size=self.img_size, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
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


def _load_families() -> None:
    # Importing a family module registers its variants; done lazily so `import vitexport` stays light.
    if not _REGISTRY:
        from vitexport.models import deit, resnet, vit  # noqa: F401


def list_models(*, include_test: bool = False) -> list[ModelSpec]:
    _load_families()
    return [s for s in _REGISTRY.values() if include_test or not s.for_tests]


def get_spec(name: str) -> ModelSpec:
    """The spec for a canonical name or alias; unknown names get close-name suggestions."""
    _load_families()
    canonical = _ALIASES.get(name, name)
    if canonical in _REGISTRY:
        return _REGISTRY[canonical]
    close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `vitexport models` lists them"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def create_model(
    name: str,
    *,
    checkpoint: str | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    attention: str = "sdpa",
) -> nn.Module:
    """Build a registered model in eval mode, with weights from a checkpoint file or timm's hub weights."""
    from vitexport import weights

    spec = get_spec(name).with_img_size(img_size)
    model = spec.build(attention=attention) if spec.family != "resnet" else spec.build()
    if checkpoint is not None:
        weights.load_checkpoint(model, checkpoint)
    elif pretrained:
        weights.load_checkpoint(model, weights.download_pretrained(spec))
    return model.eval()
