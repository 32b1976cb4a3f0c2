"""What `vitexport deploy` serves: every CPU candidate of a model built and gated, the ones that passed timed side by
side on this machine, fastest first. The CLI writes the first into the Triton repository.

Which variant is fastest depends on this CPU (VNNI, AVX-512 BF16, AMX: an INT8 IR is 3x the fp32 graph on one
machine kind and 1.25x its BF16 on another), so it is measured here, never assumed from the precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vitexport.artifacts import ModelArtifact, Precision
from vitexport.errors import ValidationError, VitExportError, first_line
from vitexport.tasks import task_of
from vitexport.variants import DEPLOYABLE, Runtime, Variant, parse_variants

# The CPU candidates, in the order they are built: the variant table's deployable rows.
CANDIDATES: tuple[Variant, ...] = DEPLOYABLE


def parse_candidates(text: str) -> tuple[Variant, ...]:
    """`--runtimes openvino-int8,onnxruntime-fp32`."""
    return parse_variants(text, DEPLOYABLE)


@dataclass(frozen=True)
class Candidate:
    variant: Variant
    verdict: str  # "passed", or why the candidate is not served (over budget, could not be built)
    artifact: ModelArtifact | None = None
    img_s: float | None = None  # timed here, side by side with the other passed candidates
    cosine: float | None = None  # the gate's worst per-image cosine against the fp32 reference
    top1_agreement: float | None = None
    chosen: bool = False

    @property
    def runtime(self) -> Runtime:
        return self.variant.runtime

    @property
    def precision(self) -> Precision:
        return self.variant.precision

    @property
    def name(self) -> str:
        return f"{self.runtime.value} {self.precision.value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime.value,
            "precision": self.precision.value,
            "path": str(self.artifact.path) if self.artifact else None,
            "img_s": None if self.img_s is None else round(self.img_s, 2),
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "verdict": self.verdict,
            "chosen": self.chosen,
        }


def deploy_candidates(
    source: ModelArtifact,
    folder: Path,
    *,
    calibration: str | Path,
    images: str | Path | None = None,
    candidates: Sequence[Variant] = CANDIDATES,
    batch: int | None = None,
    seconds: float = 1.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Candidate]:
    """Build and gate each candidate of the fp32 `source` in `folder` (INT8 calibrates on `calibration`; the gate
    grades on `images`, else on calibration images held out or, for what calibrates nothing, the calibration
    folder), time the passed ones at `batch` (default: the task's `timing_batch`, 8 images for a classifier, 1 for a
    detector: DETR takes seconds per 800 px image here), and return them fastest first (the first `chosen`), then
    the others.
    Raises VitExportError when none passes: there is nothing to serve."""
    from vitexport.export.optimize import optimize
    from vitexport.export.select import rank_by_speed

    folder.mkdir(parents=True, exist_ok=True)
    built: list[Candidate] = []
    task = task_of(source)
    for row in dict.fromkeys(candidates):
        output = folder / row.file_name(source.model)
        progress(f"{row.runtime.value} {row.precision.value}: building and gating")
        try:
            variant = optimize(
                source,
                runtime=row.runtime,
                precision=row.precision,
                calibration=calibration,
                images=images,
                output=output,
            )
        except ValidationError as e:
            built.append(Candidate(row, f"over budget: {first_line(e)}"))
            continue
        except VitExportError as e:  # e.g. a precision this runtime has no kernels for
            built.append(Candidate(row, f"not built: {first_line(e)}"))
            continue
        cosine, agreement = task.worst(variant.validation or {})
        built.append(Candidate(row, "passed", variant, cosine=cosine, top1_agreement=agreement))
    passed = [(c, c.artifact) for c in built if c.artifact is not None]
    if not passed:
        reasons = "; ".join(f"{c.name} {c.verdict}" for c in built)
        raise VitExportError(f"no candidate of {source.model} passed its gate: {reasons}")
    progress("timing the candidates that passed")
    batch = batch or task.timing_batch
    timed = rank_by_speed([artifact for _, artifact in passed], batch=batch, seconds=seconds)
    speed = {t.artifact.path: t.img_s for t in timed}
    ranked = sorted((replace(c, img_s=speed[a.path]) for c, a in passed), key=lambda c: -(c.img_s or 0.0))
    ranked[0] = replace(ranked[0], chosen=True)
    return ranked + [c for c in built if c.artifact is None]
