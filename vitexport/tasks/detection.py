"""Detection (DETR): pixel_values and pixel_mask -> per-query class logits over the classes + "no object" and
normalised boxes. Served as boxes in the original image's pixels, scores, labels and classes
(`vitexport.postprocess.detections`, as transformers' post_process_object_detection).

The gate grades a variant on the queries the reference is confident about: a variant is the same model, so query i
of the variant is query i of the reference (no Hungarian matching). Per input set it reports the class agreement,
the box L1 (normalised cx cy w h) and IoU of the same query's boxes, and over all queries the drift of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vitexport.errors import VitExportError
from vitexport.postprocess import check_settings
from vitexport.tasks.base import BYTES, FP32, INT64, NCHW, PIXELS, Budget, Grade, InputSet, Task, TensorSpec

LOGITS, PRED_BOXES = "logits", "pred_boxes"
MASK = "pixel_mask"  # (N, S, S) int64: 1 where the image is, 0 on the canvas's padding
IMAGE_SIZE = "image_size"  # the original (height, width), from the preprocessing to the post-processing
BOXES, SCORES, LABELS, CLASSES, COUNT = "boxes", "scores", "labels", "classes", "count"
DETECTION_OUTPUTS = (BOXES, SCORES, LABELS, CLASSES, COUNT)  # the image ensemble's answer
DEFAULT_THRESHOLD = 0.5  # transformers' post_process_object_detection default
DEFAULT_DETECTIONS = 100  # top-k detections per image: all of DETR's 100 queries
RANDOM_BATCHES = (1, 4)


@dataclass(frozen=True)
class DetectionTolerance(Budget):
    """A detector variant's budget, on the queries the reference is confident about: the share whose best class
    agrees, the L1 distance (normalised cx, cy, w, h) and IoU of the same query's boxes, and the drift of the logits
    over every query."""

    min_class_agreement: float = 1.0
    max_box_l1: float = 0.0  # the worst confident query, in fractions of the image
    min_mean_iou: float = 1.0
    min_iou: float = 1.0  # the worst confident query
    max_logits_abs: float = 0.0
    min_logits_cosine: float = 1.0  # per image, the worst one


# Measured against the fp32 ONNX model on scikit-image's photographs and random inputs (docs/optimize.md, "Detectors"):
# test_detr (random weights) and detr_resnet50 on a 384 px canvas (random weights).
DETECTION_TOLERANCES: dict[str, DetectionTolerance] = {
    # Fused attention: the same arithmetic in another kernel order, ~1e-6.
    "fp32": DetectionTolerance(
        min_class_agreement=1.0,
        max_box_l1=1e-3,
        min_mean_iou=0.999,
        min_iou=0.99,
        max_logits_abs=1e-3,
        min_logits_cosine=0.99999,
    ),
    "fp16": DetectionTolerance(
        min_class_agreement=0.97,
        max_box_l1=0.02,
        min_mean_iou=0.98,
        min_iou=0.9,
        max_logits_abs=0.1,
        min_logits_cosine=0.999,
    ),
    "bf16": DetectionTolerance(
        min_class_agreement=0.9,
        max_box_l1=0.05,
        min_mean_iou=0.95,
        min_iou=0.75,
        max_logits_abs=0.5,
        min_logits_cosine=0.99,
    ),
    "int8": DetectionTolerance(
        min_class_agreement=0.85,
        max_box_l1=0.1,
        min_mean_iou=0.9,
        min_iou=0.5,
        max_logits_abs=float("inf"),
        min_logits_cosine=0.95,
        gate_random_inputs=False,
    ),
}

# The fast preprocessing against the exact one on the same detector (export/gate.py preprocess_gate), on photographs of
# 0.3, 2 and 12 MP, JPEG and PNG. Measured: DETR-R50 (random weights, 800 px canvas) moves by nothing that matters
# (worst IoU 0.99998, logits cosine 0.9999999); the tests' tiny DETR on a 96 px canvas, where one canvas pixel is 1% of
# the image and a 10 px box that moves by one loses 0.1-0.2 IoU, by box L1 0.015, mean IoU 0.980, worst 0.88. Its
# photos sent resized (a JPEG re-encoded at 192 px) fail: L1 0.042, worst IoU 0.73: its clients send originals.
PREPROCESS_TOLERANCE = DetectionTolerance(
    min_class_agreement=0.97,
    max_box_l1=0.02,
    min_mean_iou=0.95,
    min_iou=0.8,
    max_logits_abs=float("inf"),
    min_logits_cosine=0.995,
)

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


def random_inputs(size: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian images and their masks: at batch 1 the whole canvas, else each image its own valid height and width
    (the first one whole), the padding zero as the preprocessing leaves it."""
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    mask = np.ones((batch, size, size), dtype=np.int64)
    for i in range(1, batch):
        h, w = rng.integers(size // 4, size + 1, size=2)
        mask[i, h:], mask[i, :, w:] = 0, 0
    return (x * mask[:, None]).astype(np.float32), mask


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
    inputs: str,
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    *,
    logits_max_abs: float,
    logits_cosine: float,
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
        logits_max_abs=logits_max_abs,
        logits_cosine=logits_cosine,
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


class Detection(Task):
    name = "detection"
    summary = "pixel_values (N, 3, S, S), pixel_mask (N, S, S) -> logits (N, Q, classes + 1), pred_boxes (N, Q, 4)"
    mask_input = MASK
    metrics_key = "detection"
    agreement = "class agreement"  # on the reference's confident queries
    postprocess = "detections_model.py"
    timing_batch = 1  # DETR takes seconds per 800 px image on 2 cores
    reference_peer = "transformers"  # timm has no DETR
    preprocess_budget = PREPROCESS_TOLERANCE
    any_input_size = True
    request_parameters = frozenset({"threshold", "top_k"})  # detections_model.py reads them per request
    bench_gate_images = 12

    def report_metrics(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        return {"accuracy": None, "detection": metrics}

    def output_names(self, *, all_heads: bool = False) -> tuple[str, ...]:
        return (LOGITS, PRED_BOXES)

    def output_width(self, num_classes: int) -> int:
        return num_classes + 1  # the last: "no object"

    def budget(self, precision: str) -> DetectionTolerance:
        if precision not in DETECTION_TOLERANCES:
            known = ", ".join(DETECTION_TOLERANCES)
            raise VitExportError(f"no detection accuracy budget for precision {precision!r}; known: {known}")
        return DETECTION_TOLERANCES[precision]

    def random_inputs(self, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return list(random_inputs(size, b, rng) for b in RANDOM_BATCHES)

    def grade(
        self,
        inputs: InputSet,
        reference: list[np.ndarray],
        candidate: list[np.ndarray],
        drift: list[Any],
        budget: Budget,
        *,
        lenient: bool,
    ) -> Grade:
        assert isinstance(budget, DetectionTolerance)
        if len(reference) != 2:
            raise VitExportError(f"a detector has two outputs (logits, boxes); got {len(reference)}")
        logits_drift = [d for d in drift if d.output.startswith(f"{self._logits(drift)} ")]
        m = detection_metrics(
            inputs.where,
            reference,
            candidate,
            logits_max_abs=max(d.max_abs for d in logits_drift),
            logits_cosine=min(d.cosine for d in logits_drift),
        )
        return Grade(asdict(m), m.failures(budget))

    @staticmethod
    def _logits(drift: list[Any]) -> str:
        return drift[0].output.split(" ")[0]  # the first output's name, as the gate labels it

    def tables(self, report: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
        measured = report.get(self.metrics_key) or []
        if not measured:
            return []
        columns = ["inputs", "images", "queries", "class agree", "box L1 max", "IoU mean", "IoU min", "logits cosine"]
        rows = [
            [
                d["inputs"],
                str(d["images"]),
                str(d["queries"]),
                f"{d['class_agreement']:.3f}",
                f"{d['box_l1_max']:.2g}",
                f"{d['iou_mean']:.4f}",
                f"{d['iou_min']:.4f}",
                f"{d['logits_cosine']:.6f}",
            ]
            for d in measured
        ]
        return [("detections vs fp32 reference (query by query, on the reference's confident queries)", columns, rows)]

    def worst(self, report: Mapping[str, Any]) -> tuple[float | None, float | None]:
        measured = report.get("detection") or []
        chosen = [d for d in measured if d["inputs"] == "images"] or measured
        if not chosen:
            return None, None
        return min(d["logits_cosine"] for d in chosen), min(d["class_agreement"] for d in chosen)

    def model_io(
        self, *, input_name: str, output_names: Sequence[str], size: int, num_classes: int
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Q is -1: the sidecar does not record the number of queries, and every backend accepts a variable dimension
        where the graph has a fixed one. Nothing is labelled: Triton's classification extension ranks a whole output
        tensor, which for (Q, classes + 1) means nothing; the ensemble labels boxes."""
        if len(output_names) != 2:
            raise VitExportError(f"a detector returns logits and boxes; it has {', '.join(output_names)}")
        logits, boxes = output_names
        inputs = (TensorSpec(input_name, FP32, (3, size, size), format=NCHW), TensorSpec(MASK, INT64, (size, size)))
        return inputs, (TensorSpec(logits, FP32, (-1, num_classes + 1)), TensorSpec(boxes, FP32, (-1, 4)))

    def preprocess_outputs(self, size: int) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(PIXELS, FP32, (3, size, size)),
            TensorSpec(MASK, INT64, (size, size)),
            TensorSpec(IMAGE_SIZE, INT64, (2,)),
        )

    def postprocess_inputs(self, model_outputs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        return (*model_outputs, TensorSpec(IMAGE_SIZE, INT64, (2,)))

    def ensemble_outputs(
        self, model_outputs: Sequence[TensorSpec], settings: Mapping[str, Any]
    ) -> tuple[TensorSpec, ...]:
        """Images hold different numbers of detections, and a batch is one tensor: the outputs have a variable
        dimension (-1), each response as wide as the most detections of any image in its request, the other rows
        padded (score 0, class -1, label ""); `count` says how many of each image's rows are real."""
        return (
            TensorSpec(BOXES, FP32, (-1, 4)),
            TensorSpec(SCORES, FP32, (-1,)),
            TensorSpec(LABELS, BYTES, (-1,)),
            TensorSpec(CLASSES, INT64, (-1,)),
            TensorSpec(COUNT, INT64, (1,)),
        )

    def check_settings(self, settings: Mapping[str, Any], num_classes: int) -> dict[str, str]:
        threshold = settings.get("threshold")
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        top_k = settings.get("top_k")
        top_k = DEFAULT_DETECTIONS if top_k is None else top_k
        try:
            check_settings(threshold, top_k)
        except ValueError as e:
            raise VitExportError(str(e)) from None
        return {"threshold": repr(float(threshold)), "top_k": str(top_k)}

    def default_labels(self, num_classes: int) -> str | None:
        return "coco91.txt" if num_classes == 91 else None


DETECTION = Detection()
