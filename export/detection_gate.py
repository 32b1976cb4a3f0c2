"""The accuracy gate of a detector's variant (DETR): the variant against its fp32 reference on real photographs, each
preprocessed onto the model's canvas with its mask, in several shapes so that padding is exercised, and on random
inputs, padded and not. Budgets come from vitexport.export.validate.DETECTION_TOLERANCES; every failed check is
collected into one ValidationError by gate.check_gate.

A variant is the same model, so query i of the variant is query i of the reference: boxes are matched by query
index, with no Hungarian matching. Per input set the gate reports, on the confident queries (`confident`):
- class agreement: the share whose best class (no-object aside, as the post-processing picks it) is the reference's;
- box L1 (the worst query's, normalised cx cy w h) and IoU of the two boxes (mean and worst);
- and over all queries the drift of the logits (max abs, worst per-image cosine).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vitexport.errors import ValidationError, VitExportError
from vitexport.export.gate import RANDOM_BATCHES, ImageSet, Run
from vitexport.export.validate import DETECTION_TOLERANCES, DetectionTolerance, DriftReport, compare
from vitexport.preprocess import PreprocessConfig

# Which queries are "confident". A trained DETR scores the queries that found an object far above the rest (DETR's
# demo keeps those over 0.7, our post-processing's default threshold is 0.5), and only those reach a user. But the
# tests and a freshly exported model without weights have random weights, whose class probabilities are near uniform
# (1/92 each for DETR-R50): no query passes any threshold, and a check on "queries over 0.5" alone would check
# nothing and pass everything. So each image's confident queries are those the reference scores at CONFIDENT_SCORE or
# more, together with its top-scoring ceil(Q * TOP_FRACTION) (at least MIN_TOP) queries: with trained weights that
# adds the near misses, the queries a drift would turn into new detections; with random weights it keeps the check on
# the queries whose best class leads most clearly, where a flip is drift and not a coin toss between equal scores.
CONFIDENT_SCORE = 0.5
TOP_FRACTION = 0.1
MIN_TOP = 3
EVAL_BATCH = 8


@dataclass(frozen=True)
class DetectionMetrics:
    inputs: str  # "random" or "images"
    images: int
    queries: int  # confident queries checked (the rest of the images' queries are not)
    over_threshold: int  # of which the reference scored >= CONFIDENT_SCORE (the others: its top-scoring queries)
    class_agreement: float
    box_l1_mean: float  # per coordinate, normalised to the image
    box_l1_max: float
    iou_mean: float
    iou_min: float
    logits_max_abs: float  # over every query
    logits_cosine: float  # the worst image's

    def failures(self, tol: DetectionTolerance) -> list[str]:
        checks = [
            (
                self.class_agreement >= tol.min_class_agreement,
                f"class agreement {self.class_agreement:.3f} < {tol.min_class_agreement:g} on {self.queries} "
                "confident queries",
            ),
            (self.box_l1_max <= tol.max_box_l1, f"box L1 {self.box_l1_max:.3g} > {tol.max_box_l1:g}"),
            (self.iou_mean >= tol.min_mean_iou, f"mean box IoU {self.iou_mean:.4f} < {tol.min_mean_iou:g}"),
            (self.iou_min >= tol.min_iou, f"worst box IoU {self.iou_min:.4f} < {tol.min_iou:g}"),
            (
                self.logits_max_abs <= tol.max_logits_abs,
                f"logits max abs diff {self.logits_max_abs:.3g} > {tol.max_logits_abs:g}",
            ),
            (
                self.logits_cosine >= tol.min_logits_cosine,
                f"logits cosine {self.logits_cosine:.6f} < {tol.min_logits_cosine}",
            ),
        ]
        return [f"{msg} ({self.inputs})" for ok, msg in checks if not ok]


@dataclass(frozen=True)
class DetectionGateReport:
    """What gate.GateReport is for a classifier; its dict has the same keys (drift per output under random and
    images, no accuracy) and the detection metrics under `detection`."""

    precision: str
    tolerance: DetectionTolerance
    random: list[DriftReport]
    images: list[DriftReport]
    detection: list[DetectionMetrics]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "task": "detection",
            "tolerance": asdict(self.tolerance),
            "random": [r.to_dict() for r in self.random],
            "images": [r.to_dict() for r in self.images],
            "accuracy": None,
            "detection": [asdict(m) for m in self.detection],
            "failures": self.failures,
        }


def gate_photos(cfg: PreprocessConfig) -> ImageSet:
    """scikit-image's gate photographs (never the calibration ones) in three shapes each, on the model's canvas."""
    from PIL import Image

    from vitexport.export.photos import detection_photos
    from vitexport.preprocess import preprocess_detection

    return ImageSet.of_detections([preprocess_detection(Image.fromarray(a), cfg) for _, a in detection_photos()])


def random_inputs(size: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian images and their masks: at batch 1 the whole canvas, else each image its own valid height and width
    (the first one whole), the padding zero as the preprocessing leaves it."""
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    mask = np.ones((batch, size, size), dtype=np.int64)
    for i in range(1, batch):
        h, w = rng.integers(size // 4, size + 1, size=2)
        mask[i, h:], mask[i, :, w:] = 0, 0
    return x * mask[:, None], mask


def evaluate_detection(
    candidate: Run,
    reference: Run,
    *,
    precision: str,
    input_size: int,
    output_names: tuple[str, ...] = ("logits", "pred_boxes"),
    images: ImageSet | None = None,
    tolerance: DetectionTolerance | None = None,
    seed: int = 0,
) -> DetectionGateReport:
    """Compare candidate with reference on random inputs (batch 1, and 4 padded) and on `images` (with their masks);
    collect failures."""
    tol = tolerance or DETECTION_TOLERANCES.get(precision)
    if tol is None:
        known = ", ".join(DETECTION_TOLERANCES)
        raise VitExportError(f"no detection accuracy budget for precision {precision!r}; known: {known}")
    if len(output_names) != 2:
        raise VitExportError(f"a detector has two outputs (logits, boxes); got {', '.join(output_names)}")
    rng = np.random.default_rng(seed)
    batches = [random_inputs(input_size, b, rng) for b in RANDOM_BATCHES]
    random_x, random_mask = np.concatenate([x for x, _ in batches]), np.concatenate([m for _, m in batches])
    sets = [("random", random_x, random_mask)]
    if images is not None:
        masks = images.masks if images.masks is not None else np.ones_like(images.images[:, 0], dtype=np.int64)
        sets.append(("images", images.images, masks))
    drift: dict[str, list[DriftReport]] = {"random": [], "images": []}
    metrics, failures = [], []
    for where, x, mask in sets:
        ref, cand = _run(reference, x, mask), _run(candidate, x, mask)
        if [o.shape for o in cand] != [o.shape for o in ref]:
            raise ValidationError(
                f"output shapes {[o.shape for o in cand]} differ from the reference's {[o.shape for o in ref]}"
            )
        drift[where] = [compare(f"{n} ({where})", r, c) for n, r, c in zip(output_names, ref, cand, strict=True)]
        m = detection_metrics(where, ref, cand, logits_drift=drift[where][0])
        metrics.append(m)
        if where == "images" or tol.gate_random_inputs or images is None:
            failures += m.failures(tol)
    return DetectionGateReport(precision, tol, drift["random"], drift["images"], metrics, failures)


def _run(run: Run, x: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    parts = [run(x[i : i + EVAL_BATCH], mask[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def confident(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, Q) booleans of the queries checked (see CONFIDENT_SCORE), and those over the threshold."""
    scores = _softmax(logits)[..., :-1].max(axis=-1)  # (B, Q): the best class's probability, no-object aside
    over = scores >= CONFIDENT_SCORE
    top = max(MIN_TOP, math.ceil(scores.shape[1] * TOP_FRACTION))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    chosen = over.copy()
    np.put_along_axis(chosen, ranked, True, axis=1)
    return chosen, over


def detection_metrics(
    inputs: str, reference: list[np.ndarray], candidate: list[np.ndarray], *, logits_drift: DriftReport
) -> DetectionMetrics:
    (ref_logits, ref_boxes), (cand_logits, cand_boxes) = reference, candidate
    chosen, over = confident(ref_logits)
    ref_class = ref_logits[..., :-1].argmax(axis=-1)[chosen]
    cand_class = cand_logits[..., :-1].argmax(axis=-1)[chosen]
    a, b = ref_boxes[chosen].astype(np.float64), cand_boxes[chosen].astype(np.float64)
    l1 = np.abs(a - b).mean(axis=-1)
    iou = box_iou(a, b)
    return DetectionMetrics(
        inputs=inputs,
        images=len(ref_logits),
        queries=int(chosen.sum()),
        over_threshold=int(over.sum()),
        class_agreement=float((ref_class == cand_class).mean()),
        box_l1_mean=float(l1.mean()),
        box_l1_max=float(l1.max()),
        iou_mean=float(iou.mean()),
        iou_min=float(iou.min()),
        logits_max_abs=logits_drift.max_abs,
        logits_cosine=logits_drift.cosine,
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each pair of (N, 4) cx cy w h boxes, row by row."""

    def corners(box: np.ndarray) -> tuple[np.ndarray, ...]:
        cx, cy, w, h = box.T
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = corners(a), corners(b)
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * np.clip(
        np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None
    )
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
