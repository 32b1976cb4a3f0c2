"""Drift between a candidate runtime's outputs and a reference's, against tolerances kept as data.

As in optimum's exporters, validation is its own step that collects every failed check and raises one typed error;
a failed check never only warns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vitexport.errors import ValidationError
from vitexport.tasks.classification import TOLERANCES, Tolerance
from vitexport.tasks.detection import PRED_BOXES

# The budgets are the tasks' (vitexport/tasks/): a classifier's drift budget is also what every export is checked by.
__all__ = ["TOLERANCES", "DriftReport", "Tolerance", "check_drift", "compare"]


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
    # The largest move of any class's softmax probability (per row of scores, as top-1); None where not class scores.
    max_probability_abs: float | None = None

    def failures(self, tol: Tolerance) -> list[str]:
        checks = [
            (self.max_abs <= tol.max_abs, f"max abs diff {self.max_abs:.3g} > {tol.max_abs:g}"),
            (self.cosine >= tol.min_cosine, f"cosine {self.cosine:.7f} < {tol.min_cosine}"),
        ]
        if self.top1_agreement is not None:
            top1 = self.top1_agreement >= tol.min_top1_agreement
            checks.append((top1, f"top-1 agreement {self.top1_agreement:.3f}"))
        limit = tol.max_probability_abs
        if limit is not None and self.max_probability_abs is not None:
            moved = self.max_probability_abs
            checks.append((moved <= limit, f"a class's probability moved by {moved:.2g} > {limit:g}"))
        where = f"{self.output} at batch {self.batch_size}"
        return [f"{where}: {msg}" for ok, msg in checks if not ok]

    def to_dict(self) -> dict:
        return asdict(self)


# Outputs whose last axis is not class scores (DETR's boxes): compared by drift and cosine only. The gate names an
# output "<output> (<inputs>)".
BOX_OUTPUTS = (PRED_BOXES,)


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
    top1 = top5 = moved = None
    if output.split(" ")[0] not in BOX_OUTPUTS:
        rows_ref, rows_cand = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        k = min(5, ref.shape[-1])
        top_ref, top_cand = np.argsort(-rows_ref, 1)[:, :k], np.argsort(-rows_cand, 1)[:, :k]
        overlap = [len(set(a) & set(b)) / k for a, b in zip(top_ref, top_cand, strict=True)]
        top1, top5 = float((top_ref[:, 0] == top_cand[:, 0]).mean()), float(np.mean(overlap))
        moved = float(np.abs(_softmax(rows_ref) - _softmax(rows_cand)).max())
    return DriftReport(
        output=output,
        batch_size=ref.shape[0],
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        cosine=float(cos.min()),
        top1_agreement=top1,
        top5_overlap=top5,
        max_probability_abs=moved,
    )


def _softmax(rows: np.ndarray) -> np.ndarray:
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_drift(reports: list[DriftReport], tol: Tolerance, *, what: str = "validation failed") -> None:
    """Raise one ValidationError, `what` followed by every failed check."""
    failures = [f for r in reports for f in r.failures(tol)]
    if failures:
        raise ValidationError(f"{what}: " + "; ".join(failures))
