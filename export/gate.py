"""The accuracy gate: an optimized variant against its fp32 reference, on random inputs and real images, and on a
labelled ImageFolder-style directory also top-1/top-5 accuracy. Budgets come from vitexport.export.validate.TOLERANCES;
every failed check is collected into one ValidationError. The image folders are read here for detectors too (their
canvas and masks); a detector's gate is export/detection_gate.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ValidationError, VitExportError
from vitexport.export.validate import TOLERANCES, DriftReport, Tolerance, compare
from vitexport.preprocess import DetectionInput, PreprocessConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
RANDOM_BATCHES = (1, 4)
EVAL_BATCH = 32

# (B,3,S,S) float32 [, a detector's (B,S,S) mask] -> float32 outputs
Run = Callable[..., list[np.ndarray]]


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, 3, S, S) float32, preprocessed
    labels: np.ndarray | None  # (N,) class indices of an ImageFolder layout; None for a flat folder
    classes: tuple[str, ...] = ()
    masks: np.ndarray | None = None  # a detector's (N, S, S) int64 pixel masks (1 = image, 0 = canvas padding)

    @classmethod
    def of_detections(cls, inputs: Sequence[DetectionInput]) -> ImageSet:
        return cls(np.stack([i.pixels for i in inputs]), None, masks=np.stack([i.mask for i in inputs]))


def load_image_folder(folder: str | Path, cfg: PreprocessConfig, *, limit: int | None = None) -> ImageSet:
    """Images of a folder, preprocessed by the model's config (a detector's: onto its canvas, with masks). With one
    subfolder per class (torchvision's ImageFolder: classes in sorted name order) the images are labelled; images
    directly in the folder are not."""
    from vitexport.preprocess import load_images, preprocess_detection

    folder = Path(folder)
    if not folder.is_dir():
        raise VitExportError(f"image folder {folder} does not exist")
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if _is_image(f)]
    else:
        files = [(f, -1) for f in sorted(folder.iterdir()) if _is_image(f)]
    if not files:
        raise VitExportError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    if limit is not None and len(files) > limit:
        # An even spread over the sorted list, so that every class of an ImageFolder stays represented.
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    labels = np.array([label for _, label in files]) if classes else None
    if cfg.detection:
        detected = ImageSet.of_detections([preprocess_detection(f, cfg) for f, _ in files])
        return replace(detected, labels=labels, classes=classes)
    return ImageSet(load_images([f for f, _ in files], cfg), labels, classes)


def hold_out(images: ImageSet, every: int) -> tuple[ImageSet, ImageSet]:
    """(every `every`-th image, the rest): a gate set disjoint from the calibration set, drawn evenly over the sorted
    folder so that every class of an ImageFolder keeps a share of both."""
    held = np.zeros(len(images.images), dtype=bool)
    held[::every] = True

    def part(keep: np.ndarray) -> ImageSet:
        labels = None if images.labels is None else images.labels[keep]
        masks = None if images.masks is None else images.masks[keep]
        return ImageSet(images.images[keep], labels, images.classes, masks)

    return part(held), part(~held)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class Accuracy:
    images: int
    reference_top1: float  # percent
    reference_top5: float
    candidate_top1: float
    candidate_top5: float

    @property
    def top1_drop(self) -> float:
        return self.reference_top1 - self.candidate_top1


@dataclass(frozen=True)
class GateReport:
    precision: str
    tolerance: Tolerance
    random: list[DriftReport]
    images: list[DriftReport]
    accuracy: Accuracy | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": asdict(self.tolerance),
            "random": [r.to_dict() for r in self.random],
            "images": [r.to_dict() for r in self.images],
            "accuracy": None
            if self.accuracy is None
            else asdict(self.accuracy) | {"top1_drop": self.accuracy.top1_drop},
            "failures": self.failures,
        }


def evaluate(
    candidate: Run,
    reference: Run,
    *,
    precision: str,
    input_size: int,
    output_names: tuple[str, ...] = ("logits",),
    images: ImageSet | None = None,
    tolerance: Tolerance | None = None,
    seed: int = 0,
) -> GateReport:
    """Compare candidate with reference on random inputs (batch 1 and 4) and on `images`; collect failures."""
    tol = tolerance or TOLERANCES.get(precision)
    if tol is None:
        raise VitExportError(f"no accuracy budget for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    rng = np.random.default_rng(seed)
    random_reports = []
    for b in RANDOM_BATCHES:
        x = rng.standard_normal((b, 3, input_size, input_size), dtype=np.float32)
        random_reports += _compare_outputs(output_names, reference(x), candidate(x), "random")
    image_reports: list[DriftReport] = []
    accuracy = None
    if images is not None:
        ref_out = _run_batched(reference, images.images)
        cand_out = _run_batched(candidate, images.images)
        image_reports = _compare_outputs(output_names, ref_out, cand_out, "images")
        if images.labels is not None:
            accuracy = _accuracy(ref_out[0], cand_out[0], images.labels)
    failures = [f for r in image_reports for f in r.failures(tol)]
    if tol.gate_random_inputs or images is None:
        # With real images present, top-1 agreement is judged on them: on Gaussian noise an untrained (or any) model's
        # top two logits can be closer than BF16/INT8 rounding, and a single flipped sample says nothing.
        random_tol = replace(tol, min_top1_agreement=0.0) if images is not None else tol
        failures = [f for r in random_reports for f in r.failures(random_tol)] + failures
    if accuracy is not None and tol.max_top1_drop is not None and accuracy.top1_drop > tol.max_top1_drop:
        failures.append(
            f"top-1 accuracy {accuracy.candidate_top1:.2f}% vs reference {accuracy.reference_top1:.2f}%: "
            f"drop {accuracy.top1_drop:.2f} pt > {tol.max_top1_drop:g} pt on {accuracy.images} images"
        )
    return GateReport(precision, tol, random_reports, image_reports, accuracy, failures)


def check_gate(report: GateReport) -> None:
    if report.failures:
        raise ValidationError(f"{report.precision} variant over budget: " + "; ".join(report.failures))


def _compare_outputs(
    names: Sequence[str], reference: list[np.ndarray], candidate: list[np.ndarray], where: str
) -> list[DriftReport]:
    if len(candidate) != len(names) or len(reference) != len(names):
        raise ValidationError(f"expected outputs {', '.join(names)}; got {len(candidate)} from the candidate")
    return [compare(f"{name} ({where})", r, c) for name, r, c in zip(names, reference, candidate, strict=True)]


def _run_batched(run: Run, x: np.ndarray) -> list[np.ndarray]:
    parts = [run(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def _accuracy(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> Accuracy:
    def topk(logits: np.ndarray, k: int) -> float:
        k = min(k, logits.shape[1])
        top = np.argsort(-logits, axis=1)[:, :k]
        return float((top == labels[:, None]).any(axis=1).mean() * 100)

    return Accuracy(len(labels), topk(reference, 1), topk(reference, 5), topk(candidate, 1), topk(candidate, 5))


def torch_reference(
    name: str, checkpoint: str | Path, output_names: tuple[str, ...] = ("logits",), *, img_size: int | None = None
) -> Run:
    """The fp32 PyTorch model as a reference runner, on the same weights the candidate was exported from (a
    detector's takes its masks too)."""
    import torch

    from vitexport.export.onnx import _ExportHeads
    from vitexport.models import create_model

    head = "features" if output_names == ("embeddings",) else "logits"
    model = create_model(name, checkpoint=str(checkpoint), head=head, img_size=img_size)
    if len(output_names) == 3:  # `--heads all`: average, class head, distillation head
        model = _ExportHeads(model).eval()

    def run(x: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        inputs = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]
        inputs += [] if mask is None else [torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))]
        with torch.inference_mode():
            out = model(*inputs)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    return run


def reference_for(candidate: ModelArtifact, reference: str, checkpoint: str | Path | None = None) -> Run:
    """The fp32 reference `candidate` is graded against: an fp32 artifact file, or a registered model built on the
    candidate's checkpoint. Comparing two different models would report drift (or pass on chance agreement) instead
    of an error, so a reference of another model, size, outputs or checkpoint is refused."""
    from vitexport.artifacts import load_artifact
    from vitexport.export.onnx import looks_like_a_file
    from vitexport.export.runners import load_runner
    from vitexport.models import get_spec
    from vitexport.weights import sha256_file

    if looks_like_a_file(reference):
        if checkpoint is not None:
            raise VitExportError("--checkpoint applies to a registered --reference model, not to a file")
        ref = load_artifact(reference)
        if ref.precision != "fp32":
            raise VitExportError(f"the reference must be fp32; {reference} is {ref.precision}")
        pairs = [
            ("model", ref.model, candidate.model),
            ("input size", ref.preprocess.input_size, candidate.preprocess.input_size),
            ("outputs", ", ".join(ref.output_names), ", ".join(candidate.output_names)),
        ]
        mismatches = [f"{what} {r} vs {c}" for what, r, c in pairs if r != c]
        ref_sha, cand_sha = ref.checkpoint_sha256, candidate.checkpoint_sha256
        if ref_sha and cand_sha and ref_sha != cand_sha:  # compared only when both know it (not random weights)
            mismatches.append(f"checkpoint sha256 {ref_sha[:12]}... vs {cand_sha[:12]}...")
        if mismatches:
            raise VitExportError(
                f"{reference} is not the model {candidate.path} was derived from: " + "; ".join(mismatches)
            )
        return load_runner(ref, spinning=False)
    spec = get_spec(reference)
    if spec.name != get_spec(candidate.model).name:
        raise VitExportError(f"{candidate.path} is a {candidate.model}, not a {reference}")
    detector = candidate.task == "detection"  # its canvas is any size: nothing of the model is resampled for it
    if spec.img_size != candidate.preprocess.input_size and not detector:
        # The PyTorch reference is built at the registered size; the candidate's export resampled it.
        raise VitExportError(
            f"{candidate.path} takes {candidate.preprocess.input_size}px inputs, {spec.name} {spec.img_size}px: "
            "give its fp32 ONNX export as --reference"
        )
    if checkpoint is None:
        # Random weights differ at every build, so a weightless model cannot be a reference.
        raise VitExportError("a registered --reference model needs --checkpoint with the candidate's weights")
    if candidate.checkpoint_sha256 and sha256_file(checkpoint) != candidate.checkpoint_sha256:
        raise VitExportError(f"{checkpoint} is not the checkpoint {candidate.path} was exported from")
    size = candidate.preprocess.input_size if detector else None
    return torch_reference(reference, checkpoint, candidate.output_names, img_size=size)
