"""The accuracy gate: an optimized variant against its fp32 reference, on random inputs and real images, and on a
labelled ImageFolder-style directory also top-1/top-5 accuracy. Budgets come from vitexport.export.validate.TOLERANCES;
every failed check is collected into one ValidationError. The gate is the same for every task; what it measures beyond
each output's drift, and its budgets, are the task's (vitexport/tasks/). Image folders are read for detectors too
(their canvas and masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ValidationError, VitExportError
from vitexport.export.validate import DriftReport, compare
from vitexport.preprocess import DetectionInput, PreprocessConfig
from vitexport.tasks import CLASSIFICATION, Budget, InputSet, Task, task_of
from vitexport.tasks.classification import Tolerance

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
EVAL_BATCH = 8  # images per call: DETR's 800 px canvas at 32 would hold GBs of activations

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
class GateReport:
    """A variant against its fp32 reference: the drift of every output on random inputs and on images, the task's
    own metrics (a classifier's accuracy on a labelled folder, a detector's per-query agreement) and every failure."""

    task: Task
    precision: str
    tolerance: Budget
    random: list[DriftReport]
    images: list[DriftReport]
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the task's, one per input set that has any
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "precision": self.precision,
            "task": self.task.name,
            "tolerance": self.tolerance.to_dict(),
            "random": [r.to_dict() for r in self.random],
            "images": [r.to_dict() for r in self.images],
            **self.task.report_metrics(self.metrics),
            "failures": self.failures,
        }


def evaluate(
    candidate: Run,
    reference: Run,
    *,
    precision: str,
    input_size: int,
    task: Task = CLASSIFICATION,
    output_names: tuple[str, ...] | None = None,
    images: ImageSet | None = None,
    tolerance: Budget | None = None,
    seed: int = 0,
) -> GateReport:
    """Compare candidate with reference on the task's random inputs and on `images`; collect every failure. What is
    measured and judged beyond the drift of each output is the task's (`Task.grade`)."""
    budget = tolerance or task.budget(precision)
    names = output_names or task.output_names()
    rng = np.random.default_rng(seed)
    sets = [InputSet("random", task.random_inputs(input_size, rng))]
    if images is not None:
        sets.append(InputSet("images", [(images.images, _masks(task, images))], images.labels))
    drift: dict[str, list[DriftReport]] = {"random": [], "images": []}
    metrics, failures = [], []
    for inputs in sets:
        ref_parts, cand_parts = [], []
        for x, mask in inputs.batches:
            ref, cand = _run_batched(reference, x, mask), _run_batched(candidate, x, mask)
            drift[inputs.where] += _compare_outputs(names, ref, cand, inputs.where)
            ref_parts.append(ref)
            cand_parts.append(cand)
        judged = inputs.where == "images" or budget.gate_random_inputs or images is None
        lenient = inputs.where == "random" and images is not None
        grade = task.grade(
            inputs, _joined(ref_parts), _joined(cand_parts), drift[inputs.where], budget, lenient=lenient
        )
        if grade.metrics is not None:
            metrics.append(grade.metrics)
        if judged:
            failures += grade.failures
    # Random inputs are listed first, as they were measured.
    return GateReport(task, precision, budget, drift["random"], drift["images"], metrics, failures)


def check_gate(report: GateReport) -> None:
    if report.failures:
        raise ValidationError(f"{report.precision} variant over budget: " + "; ".join(report.failures))


def _masks(task: Task, images: ImageSet) -> np.ndarray | None:
    if task.mask_input is None:
        return None
    return images.masks if images.masks is not None else np.ones_like(images.images[:, 0], dtype=np.int64)


def _compare_outputs(
    names: Sequence[str], reference: list[np.ndarray], candidate: list[np.ndarray], where: str
) -> list[DriftReport]:
    if len(candidate) != len(names) or len(reference) != len(names):
        raise ValidationError(f"expected outputs {', '.join(names)}; got {len(candidate)} from the candidate")
    return [compare(f"{name} ({where})", r, c) for name, r, c in zip(names, reference, candidate, strict=True)]


def _run_batched(run: Run, x: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray]:
    def call(i: int) -> list[np.ndarray]:
        chunk = x[i : i + EVAL_BATCH]
        return run(chunk) if mask is None else run(chunk, mask[i : i + EVAL_BATCH])

    parts = [call(i) for i in range(0, len(x), EVAL_BATCH)]
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def _joined(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def gate_photos(cfg: PreprocessConfig) -> ImageSet:
    """scikit-image's gate photographs (never the calibration ones) in three shapes each, on a detector's canvas: its
    random-weight outputs on noise say little, and the photographs are in the wheel, offline."""
    from PIL import Image

    from vitexport.export.photos import detection_photos
    from vitexport.preprocess import preprocess_detection

    return ImageSet.of_detections([preprocess_detection(Image.fromarray(a), cfg) for _, a in detection_photos()])


def torch_reference(
    name: str,
    checkpoint: str | Path,
    output_names: tuple[str, ...] = ("logits",),
    *,
    img_size: int | None = None,
    task: Task = CLASSIFICATION,
) -> Run:
    """The fp32 PyTorch model as a reference runner, on the same weights the candidate was exported from (a
    detector's takes its masks too)."""
    import torch

    from vitexport.export.onnx import _ExportHeads
    from vitexport.models import create_model

    model = create_model(name, checkpoint=str(checkpoint), head=task.model_head, img_size=img_size)
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
    task = task_of(candidate)
    if spec.img_size != candidate.preprocess.input_size and not task.any_input_size:
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
    size = candidate.preprocess.input_size if task.any_input_size else None
    return torch_reference(reference, checkpoint, candidate.output_names, img_size=size, task=task)


def preprocess_gate(
    run: Run,
    cfg: PreprocessConfig,
    task: Task,
    *,
    output_names: tuple[str, ...] | None = None,
    sent: bool = False,
    photos: Sequence[tuple[str, bytes]] | None = None,
    precision: str = "fp32",
) -> GateReport:
    """The fast preprocessing against the exact reference, on the same model `run`, by the gate's measures (each
    output's drift: worst cosine, top-1 agreement; a detector's query agreement and boxes) within the task's
    `preprocess_budget`, on photographs of 0.3, 2 and 12 MP as JPEG and PNG (`photos.sized_photos`). `sent`: the
    photos as a client sends them resized (`reduce_for_sending`) and then preprocessed fast, against the exact
    preprocessing of the originals. `precision`, the served variant's: a budget's bound on probabilities (what a
    client reads) holds for fp32 only, where the served answers are the reference's; a variant whose own precision
    moves them by more is gated by the drift measures alone."""
    return preprocess_gates(
        run, cfg, task, output_names=output_names, sent=(sent,), photos=photos, precision=precision
    )[0]


def preprocess_gates(
    run: Run,
    cfg: PreprocessConfig,
    task: Task,
    *,
    output_names: tuple[str, ...] | None = None,
    sent: Sequence[bool] = (False, True),
    photos: Sequence[tuple[str, bytes]] | None = None,
    precision: str = "fp32",
) -> list[GateReport]:
    """`preprocess_gate` for each of `sent` (the photos as given, then as a client sends them), against one exact
    reference: the originals' exact preprocessing and the model's answers on them are computed once."""
    from vitexport.export.photos import sized_photos
    from vitexport.preprocess import preprocess_detection, preprocess_image, reduce_for_sending

    files = list(photos if photos is not None else sized_photos())

    def prepared(fast: bool, resized: bool) -> ImageSet:
        data = [reduce_for_sending(b, cfg) if resized else b for _, b in files]
        if cfg.detection:
            return ImageSet.of_detections([preprocess_detection(d, cfg, fast=fast) for d in data])
        return ImageSet(np.stack([preprocess_image(d, cfg, fast=fast) for d in data]), None)

    budget = task.preprocess_budget
    if precision != "fp32" and isinstance(budget, Tolerance) and budget.max_probability_abs is not None:
        budget = replace(budget, max_probability_abs=None)
    names = output_names or task.output_names()
    exact = prepared(False, False)
    reference = _run_batched(run, exact.images, _masks(task, exact))
    inputs = InputSet("images", [(exact.images, _masks(task, exact))])
    reports = []
    for resized in sent:
        fast = prepared(True, resized)
        candidate = _run_batched(run, fast.images, _masks(task, fast))
        drift = _compare_outputs(names, reference, candidate, "sent photos" if resized else "photos")
        grade = task.grade(inputs, reference, candidate, drift, budget, lenient=False)
        metrics = [] if grade.metrics is None else [grade.metrics]
        reports.append(GateReport(task, "fp32", budget, [], drift, metrics, grade.failures))
    return reports


def preprocess_figures(report: GateReport) -> dict[str, Any]:
    """A preprocessing gate's figures as the repository records them: passed, the photos, the worst cosine, top-1
    agreement and largest difference of each output, the task's metrics (a detector's), the failures."""
    outputs = {
        r.output: {
            "cosine": round(r.cosine, 6),
            "top1_agreement": r.top1_agreement,
            "max_abs": round(r.max_abs, 5),
            "max_probability_abs": None if r.max_probability_abs is None else float(f"{r.max_probability_abs:.3g}"),
        }
        for r in report.images
    }
    photos = report.images[0].batch_size if report.images else 0
    return {"passed": report.passed, "photos": photos, "outputs": outputs, "failures": report.failures}
