"""A model's preprocessing as data: PreprocessConfig (registered with the model, recorded in every artifact)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the ViT (AugReg) checkpoints normalise to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input: resize the short side to input_size / crop_pct, center crop.

    Detectors (`shortest_edge` set) instead keep the whole image: DETR's evaluation resize (shorter side to
    `shortest_edge`, longer side at most `longest_edge`), scaled down further to fit the input_size x input_size
    canvas, on which it sits top-left, padded; the model's pixel_mask marks the image.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    shortest_edge: int | None = None
    longest_edge: int | None = None

    @property
    def detection(self) -> bool:
        return self.shortest_edge is not None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }
        if self.detection:  # only then: classifiers' dicts stay what older vitexports wrote and read
            d |= {"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        edges = {k: None if d.get(k) is None else int(d[k]) for k in ("shortest_edge", "longest_edge")}
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            **edges,
        )
