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
from vitexport.export.options import Runtime

# The CPU candidates, in the order they are built. FP16 is left out: ONNX Runtime's CPU provider runs it through
# casts, slower than fp32 everywhere these machines were measured.
CANDIDATES: tuple[tuple[Runtime, Precision], ...] = (
    (Runtime.openvino, Precision.int8),
    (Runtime.openvino, Precision.bf16),
    (Runtime.onnxruntime, Precision.int8),
    (Runtime.onnxruntime, Precision.fp32),
)


CLASSIFIER_BATCH, DETECTION_BATCH = 8, 1  # the batch the candidates are timed at


def parse_candidates(text: str) -> tuple[tuple[Runtime, Precision], ...]:
    """`--runtimes openvino-int8,onnxruntime-fp32`."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        runtime, _, precision = item.rpartition("-")
        try:
            out.append((Runtime(runtime), Precision(precision)))
        except ValueError:
            valid = ", ".join(f"{r.value}-{p.value}" for r, p in CANDIDATES)
            raise VitExportError(f"--runtimes takes RUNTIME-PRECISION items such as {valid}; not {item!r}") from None
    if not out:
        raise VitExportError("--runtimes names no candidate")
    return tuple(out)


@dataclass(frozen=True)
class Candidate:
    runtime: Runtime
    precision: Precision
    verdict: str  # "passed", or why the candidate is not served (over budget, could not be built)
    artifact: ModelArtifact | None = None
    img_s: float | None = None  # timed here, side by side with the other passed candidates
    cosine: float | None = None  # the gate's worst per-image cosine against the fp32 reference
    top1_agreement: float | None = None
    chosen: bool = False

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
    candidates: Sequence[tuple[Runtime, Precision]] = CANDIDATES,
    batch: int | None = None,
    seconds: float = 1.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Candidate]:
    """Build and gate each candidate of the fp32 `source` in `folder` (INT8 calibrates on `calibration`; the gate
    grades on `images`, else on calibration images held out or, for what calibrates nothing, the calibration
    folder), time the passed ones at `batch` (default: 8 images for a classifier, 1 for a detector: DETR takes
    seconds per 800 px image here), and return them fastest first (the first `chosen`), then the others.
    Raises VitExportError when none passes: there is nothing to serve."""
    from vitexport.export.optimize import optimize
    from vitexport.export.select import rank_by_speed

    folder.mkdir(parents=True, exist_ok=True)
    built: list[Candidate] = []
    for runtime, precision in dict.fromkeys(candidates):
        suffix = ".xml" if runtime is Runtime.openvino else ".onnx"
        output = folder / f"{source.model}_{runtime.value}_{precision.value}{suffix}"
        progress(f"{runtime.value} {precision.value}: building and gating")
        try:
            variant = optimize(
                source, runtime=runtime, precision=precision, calibration=calibration, images=images, output=output
            )
        except ValidationError as e:
            built.append(Candidate(runtime, precision, f"over budget: {first_line(e)}"))
            continue
        except VitExportError as e:  # e.g. a precision this runtime has no kernels for
            built.append(Candidate(runtime, precision, f"not built: {first_line(e)}"))
            continue
        built.append(Candidate(runtime, precision, "passed", variant, **_drift(variant.validation)))
    passed = [c for c in built if c.artifact is not None]
    if not passed:
        reasons = "; ".join(f"{c.name} {c.verdict}" for c in built)
        raise VitExportError(f"no candidate of {source.model} passed its gate: {reasons}")
    progress("timing the candidates that passed")
    batch = batch or (DETECTION_BATCH if source.task == "detection" else CLASSIFIER_BATCH)
    timed = rank_by_speed([c.artifact for c in passed], batch=batch, seconds=seconds)
    speed = {t.artifact.path: t.img_s for t in timed}
    ranked = sorted((replace(c, img_s=speed[c.artifact.path]) for c in passed), key=lambda c: -c.img_s)
    ranked[0] = replace(ranked[0], chosen=True)
    return ranked + [c for c in built if c.artifact is None]


def _drift(validation: dict[str, Any]) -> dict[str, float | None]:
    """The gate's worst cosine and top-1 agreement, on images where it had them, else on random inputs. A detector's:
    its logits' cosine and its class agreement on the reference's confident queries."""
    if validation.get("task") == "detection":
        measured = validation.get("detection") or []
        chosen = [d for d in measured if d["inputs"] == "images"] or measured
        if not chosen:
            return {"cosine": None, "top1_agreement": None}
        return {
            "cosine": min(d["logits_cosine"] for d in chosen),
            "top1_agreement": min(d["class_agreement"] for d in chosen),
        }
    reports = validation.get("images") or validation.get("random") or []
    if not reports:
        return {"cosine": None, "top1_agreement": None}
    return {
        "cosine": min(r["cosine"] for r in reports),
        # Boxes have no top-1 (None): the worst of the outputs that are class scores.
        "top1_agreement": min((r["top1_agreement"] for r in reports if r["top1_agreement"] is not None), default=None),
    }
