"""What a detector's outputs mean to a user: boxes in the original image's pixels, scores and classes. numpy only,
so the CLI and the served post-processing model run the same code, as preprocess/ is for the inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the original image's pixels
    score: float
    class_index: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": self.score,
            "label": self.label,
            "class": self.class_index,
        }


def box(values: Sequence[float]) -> tuple[float, float, float, float]:
    """A box's four corners (x0, y0, x1, y1) as plain floats, from any row of four numbers."""
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def check_settings(threshold: float | None, top_k: int | None) -> None:
    """The one rule for a detector's settings, wherever they are given (`repo`, the client, here): a score threshold
    in [0, 1) (NaN is not), at least one detection. None: not given. Raises ValueError."""
    if threshold is not None and not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")


def detections(
    logits: np.ndarray,
    boxes: np.ndarray,
    size: tuple[int, int],
    *,
    threshold: float = 0.5,
    top_k: int = 100,
    labels: Sequence[str] | None = None,
) -> list[Detection]:
    """One image's detections, most confident first: DETR's post-processing (transformers'
    post_process_object_detection): softmax over the classes, the no-object class (the last) dropped, each query's
    best class kept above `threshold`, its box (cx, cy, w, h as fractions of the image) turned into pixel corners.

    logits (Q, C + 1), boxes (Q, 4), size the original (height, width)."""
    import numpy as np

    check_settings(threshold, top_k)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = (z / z.sum(axis=-1, keepdims=True))[:, :-1]
    scores, classes = probabilities.max(axis=-1), probabilities.argmax(axis=-1)
    cx, cy, w, h = boxes.T
    height, width = size
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1) * [width, height, width, height]
    keep = [i for i in np.argsort(-scores, kind="stable") if scores[i] > threshold][:top_k]
    return [
        Detection(
            box(corners[i]),
            float(scores[i]),
            int(classes[i]),
            labels[classes[i]] if labels is not None else str(int(classes[i])),
        )
        for i in keep
    ]
