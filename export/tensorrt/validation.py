"""An engine checked against ONNX Runtime on random inputs at the profile's small batch sizes: which reference and
budget each precision is held to (VALIDATION_RULES), and the comparison."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.export.tensorrt.plan import fp32_reference
from vitexport.export.tensorrt.runner import EngineRunner
from vitexport.export.tensorrt.settings import BuildSettings, EngineBuildError, Precision
from vitexport.export.validate import TOLERANCES, DriftReport, Tolerance, check_drift, compare


@dataclass(frozen=True)
class ValidationRule:
    """What an engine of one precision is checked against on ONNX Runtime, on random inputs at the profile's small
    batch sizes, and with which budget.

    `reference` "fp32" gates the engine against the fp32 ONNX. "source" gates it against the very ONNX it was built
    from (the same graph run by another runtime), and drift from the fp32 ONNX is then reported, never gated.
    """

    reference: str  # "fp32" or "source"
    tolerance: Tolerance


# TensorRT against ONNX Runtime running the same Q/DQ graph: the same scales clip both alike, so random inputs are fair
# here, unlike against fp32, where calibrated INT8 clips Gaussian noise far from the images it was calibrated on (the
# accuracy gate's int8 budget does not gate random inputs either: export/validate.py, export/gate.py). What may differ
# is rounding at requantization and, on TensorRT 10, FP16 in the unquantized layers; a wrong scale or a broken Q/DQ
# fusion drops the cosine far below 0.99. Top-1 is not gated: on noise the two top logits can be closer than one
# quantization step, and a flipped sample says nothing.
QDQ_ENGINE_TOLERANCE = Tolerance(max_abs=float("inf"), min_cosine=0.99, min_top1_agreement=0.0)

VALIDATION_RULES: dict[Precision, ValidationRule] = {
    # TensorRT runs FP32 matmuls in TF32 by default: the fp16 budget, not the fp32 one.
    Precision.fp32: ValidationRule("fp32", TOLERANCES["fp16"]),
    Precision.fp16: ValidationRule("fp32", TOLERANCES["fp16"]),
    # The Q/DQ graph itself passed the accuracy gate against fp32 on images (vitexport optimize); the engine must
    # match that graph.
    Precision.int8: ValidationRule("source", QDQ_ENGINE_TOLERANCE),
}


def validation_tolerance(precision: Precision) -> Tolerance:
    """The budget an engine of this precision is gated with (VALIDATION_RULES)."""
    return VALIDATION_RULES[precision].tolerance


@dataclass(frozen=True)
class ValidationReferences:
    """The ONNX artifacts an engine is compared with: `gate` decides, `fp32` (when not the gate) is only reported."""

    gate: ModelArtifact
    fp32: ModelArtifact | None = None


def validation_references(artifact: ModelArtifact, precision: Precision) -> ValidationReferences:
    """The references VALIDATION_RULES names for an engine built from `artifact`; raises before a long build."""
    if VALIDATION_RULES[precision].reference == "fp32":
        return ValidationReferences(fp32_reference(artifact))
    try:
        fp32 = fp32_reference(artifact)
    except EngineBuildError:
        fp32 = None  # a Q/DQ ONNX without its fp32 source: nothing to report drift against, the gate still holds
    return ValidationReferences(
        artifact, fp32 if fp32 is not None and fp32.path.resolve() != artifact.path.resolve() else None
    )


def validate_engine(
    trt: Any,
    engine: Any,
    device: Any,
    artifact: ModelArtifact,
    references: ValidationReferences,
    settings: BuildSettings,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the engine at the profile's small batch sizes and check it as VALIDATION_RULES says (compare_with_onnx)."""

    runner = EngineRunner(trt, engine, device)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return runner({artifact.input_name: x})

    return compare_with_onnx(run, artifact, references, settings, seed=seed)


def compare_with_onnx(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    artifact: ModelArtifact,
    references: ValidationReferences,
    settings: BuildSettings,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare an engine's outputs (`run`) with ONNX Runtime on random inputs; raise ValidationError on any failed
    check against the gating reference, and return the sidecar's `validation` (with fp32 drift when only reported)."""
    from vitexport.ort import ort_session

    rule = VALIDATION_RULES[settings.precision]
    gate_session = ort_session(references.gate.path)
    fp32_session = ort_session(references.fp32.path) if references.fp32 is not None else None
    rng = np.random.default_rng(seed)
    size = artifact.preprocess.input_size
    gated: list[DriftReport] = []
    reported: list[DriftReport] = []
    for b in settings.profile.validation_batches():
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        got = run(x)
        gated += _compare(artifact, got, gate_session.run(list(references.gate.output_names), {artifact.input_name: x}))
        if fp32_session is not None and references.fp32 is not None:
            expected = fp32_session.run(list(references.fp32.output_names), {artifact.input_name: x})
            reported += _compare(artifact, got, expected)
    what = f"the {settings.precision.value} engine differs from {references.gate.path.name} on ONNX Runtime"
    check_drift(gated, rule.tolerance, what=what)
    validation: dict[str, Any] = {
        "passed": True,
        "reference": references.gate.path.name,
        "reports": [r.to_dict() for r in gated],
    }
    if references.fp32 is not None:
        validation["fp32_reference"] = references.fp32.path.name
        validation["fp32_drift"] = [r.to_dict() for r in reported]  # reported, not gated
    return validation


def _compare(artifact: ModelArtifact, got: dict[str, np.ndarray], expected: list[np.ndarray]) -> list[DriftReport]:
    names = artifact.output_names
    return [
        compare(n, np.asarray(e, np.float32), got[n].astype(np.float32)) for n, e in zip(names, expected, strict=True)
    ]
