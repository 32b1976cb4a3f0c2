"""Drift between a candidate runtime's outputs and a reference's, against tolerances kept as data.

As in optimum's exporters, validation is its own step that collects every failed check and raises one typed error;
a failed check never only warns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vitexport.errors import ValidationError


@dataclass(frozen=True)
class Tolerance:
    max_abs: float  # on logits
    min_cosine: float  # per sample, the worst one
    min_top1_agreement: float = 1.0
    # On a labelled image folder: the most top-1 accuracy (percentage points) a variant may lose to the reference.
    max_top1_drop: float | None = None
    # Whether drift on random (Gaussian) inputs is gated or only reported. Calibrated INT8 clips activations to the
    # ranges seen on real images, so out-of-distribution noise drifts far (cosine ~0.9) while images agree.
    gate_random_inputs: bool = True


# One place for the budgets. fp32 ONNX vs PyTorch differs only by kernel order: ~1e-6 on ViT-B logits.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999),
    # Optimized variants, measured against the fp32 reference (export/gate.py). Max abs is loose where the logit
    # scale decides it (INT8); cosine, top-1 agreement and the accuracy drop carry the gate there.
    # FP16 with FP32 LayerNorm/Softmax: ~2e-3 on DeiT logits.
    "fp16": Tolerance(max_abs=0.05, min_cosine=0.9995, min_top1_agreement=0.97, max_top1_drop=0.3),
    # BF16 (OpenVINO): 8-bit mantissa, ~0.02 on DeiT-B logits, cosine 0.9999.
    "bf16": Tolerance(max_abs=0.5, min_cosine=0.995, min_top1_agreement=0.9, max_top1_drop=0.5),
    "int8": Tolerance(
        max_abs=float("inf"), min_cosine=0.98, min_top1_agreement=0.85, max_top1_drop=1.0, gate_random_inputs=False
    ),
}


@dataclass(frozen=True)
class DetectionTolerance:
    """A detector variant's budget (export/detection_gate.py), on the queries the reference is confident about:
    the share whose best class agrees, the L1 distance (normalised cx, cy, w, h) and IoU of the same query's boxes,
    and the drift of the logits over every query."""

    min_class_agreement: float
    max_box_l1: float  # the worst confident query, in fractions of the image
    min_mean_iou: float
    min_iou: float  # the worst confident query
    max_logits_abs: float
    min_logits_cosine: float  # per image, the worst one
    gate_random_inputs: bool = True  # as Tolerance.gate_random_inputs: calibrated INT8 clips noise it never saw


# Measured against the fp32 ONNX model on scikit-image's photographs and random inputs (docs/optimize.md, "Detectors"):
# test_detr (random weights) and detr_resnet50 on a 384 px canvas (random weights).
DETECTION_TOLERANCES: dict[str, DetectionTolerance] = {
    # Fused attention: the same arithmetic in another kernel order, ~1e-6.
    "fp32": DetectionTolerance(1.0, 1e-3, 0.999, 0.99, 1e-3, 0.99999),
    "fp16": DetectionTolerance(0.97, 0.02, 0.98, 0.9, 0.1, 0.999),
    "bf16": DetectionTolerance(0.9, 0.05, 0.95, 0.75, 0.5, 0.99),
    "int8": DetectionTolerance(0.85, 0.1, 0.9, 0.5, float("inf"), 0.95, gate_random_inputs=False),
}


@dataclass(frozen=True)
class DriftReport:
    output: str
    batch_size: int
    max_abs: float
    mean_abs: float
    cosine: float  # the lowest per-sample cosine similarity
    # Over the last axis of every row (detection logits: per query); None for outputs that are not class scores.
    top1_agreement: float | None
    top5_overlap: float | None

    def failures(self, tol: Tolerance) -> list[str]:
        checks = [
            (self.max_abs <= tol.max_abs, f"max abs diff {self.max_abs:.3g} > {tol.max_abs:g}"),
            (self.cosine >= tol.min_cosine, f"cosine {self.cosine:.7f} < {tol.min_cosine}"),
        ]
        if self.top1_agreement is not None:
            top1 = self.top1_agreement >= tol.min_top1_agreement
            checks.append((top1, f"top-1 agreement {self.top1_agreement:.3f}"))
        where = f"{self.output} at batch {self.batch_size}"
        return [f"{where}: {msg}" for ok, msg in checks if not ok]

    def to_dict(self) -> dict:
        return asdict(self)


# Outputs whose last axis is not class scores (DETR's boxes): compared by drift and cosine only. The gate names an
# output "<output> (<inputs>)".
BOX_OUTPUTS = ("pred_boxes",)


def compare(output: str, reference: np.ndarray, candidate: np.ndarray) -> DriftReport:
    """Drift of a candidate output (B, ..., C) from the reference's: classifier logits (B, C), an embedding, or a
    detector's logits (B, Q, C) and boxes (B, Q, 4). Cosine is per sample; top-1/top-5 per row of scores."""
    if reference.shape != candidate.shape:
        raise ValidationError(f"{output}: shape {candidate.shape} differs from the reference's {reference.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    flat_ref, flat_cand = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_cand, axis=1)
    cos = (flat_ref * flat_cand).sum(1) / (norms + 1e-30)
    top1 = top5 = None
    if output.split(" ")[0] not in BOX_OUTPUTS:
        rows_ref, rows_cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        k = min(5, ref.shape[-1])
        top_ref, top_cand = np.argsort(-rows_ref, 1)[:, :k], np.argsort(-rows_cand, 1)[:, :k]
        overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand, strict=True)]
        top1, top5 = float((top_ref[:, 0] == top_cand[:, 0]).mean()), float(np.mean(overlap))
    return DriftReport(
        output=output,
        batch_size=ref.shape[0],
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        cosine=float(cos.min()),
        top1_agreement=top1,
        top5_overlap=top5,
    )


def check_drift(reports: list[DriftReport], tol: Tolerance, *, what: str = "validation failed") -> None:
    """Raise one ValidationError, `what` followed by every failed check."""
    failures = [f for r in reports for f in r.failures(tol)]
    if failures:
        raise ValidationError(f"{what}: " + "; ".join(failures))
