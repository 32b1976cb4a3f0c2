"""The tables the commands print: one rendering each for drift reports, the accuracy gate, op counts, engines,
embeddings and detections (and the picture `infer --draw` writes)."""

from __future__ import annotations

from typing import Any

from vitexport.cli.console import print_table, warn

DRIFT_COLUMNS = ["output", "batch", "max abs diff", "cosine", "top-1 agreement"]


def drift_table(title: str, reports: list[dict[str, Any]], *, cosine_digits: int = 6) -> None:
    """A validation's drift reports (ONNX Runtime vs PyTorch, an engine vs ONNX Runtime): one row per output and
    batch."""
    rows = [
        [
            r["output"],
            r["batch_size"],
            f"{r['max_abs']:.2e}",
            f"{r['cosine']:.{cosine_digits}f}",
            _fraction(r["top1_agreement"], 2),
        ]
        for r in reports
    ]
    print_table(title, DRIFT_COLUMNS, rows)


def _fraction(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"  # None: an output that is not class scores (boxes)


def gate_table(validation: dict[str, Any]) -> None:
    """The accuracy gate of a variant: drift on random inputs and images, and accuracy on labelled images."""
    rows = [
        [
            r["output"],
            r["batch_size"],
            f"{r['max_abs']:.3g}",
            f"{r['mean_abs']:.3g}",
            f"{r['cosine']:.6f}",
            _fraction(r["top1_agreement"], 3),
            _fraction(r["top5_overlap"], 3),
        ]
        for r in [*validation["random"], *validation["images"]]
    ]
    columns = ["output", "batch", "max abs", "mean abs", "cosine", "top-1 agree", "top-5 overlap"]
    print_table(f"{validation['precision']} variant vs fp32 reference", columns, rows)
    from vitexport.tasks import CLASSIFICATION, get_task

    # The task's own metrics, as it lays them out (a classifier's accuracy, a detector's per-query agreement).
    for title, columns, rows in get_task(validation.get("task", CLASSIFICATION.name)).tables(validation):
        print_table(title, columns, rows)


def op_count_table(counts: dict[str, dict[str, int]]) -> None:
    """The ops an optimization changed, before and after."""
    before, after = counts["before"], counts["after"]
    changed = [op for op in dict.fromkeys([*after, *before]) if before.get(op, 0) != after.get(op, 0)]
    rows = [[op, before.get(op, 0), after.get(op, 0)] for op in changed]
    rows.append(["total", sum(before.values()), sum(after.values())])
    print_table("op counts (changed ops)", ["op", "before", "after"], rows)


def engine_warnings(artifact: Any) -> None:
    """What the fusion audit and the build found wrong without failing the build, on stderr."""
    for message in artifact.details["fusion_audit"]["warnings"]:
        warn("fusion audit", message)
    for message in artifact.details.get("build_warnings", []):
        warn("build", message)


def engine_report(artifact: Any) -> None:
    """A TensorRT engine: the fusion audit and the validation tables."""
    d = artifact.details
    audit = d["fusion_audit"]
    profile = "{min}:{opt}:{max}".format(**d["profile"])
    fused = f"{audit['fused_attention']}/{audit['expected_attention']}"
    row = [
        d["precision"],
        profile,
        fused,
        audit["unfused_softmax"],
        len(audit["layernorm_not_fp32"]),
        d["build_seconds"],
    ]
    print_table(
        f"TensorRT {d['tensorrt_version']} on {d['gpu_name']} (sm {d['compute_capability']})",
        ["precision", "profile", "fused MHA", "unfused Softmax", "LayerNorm not FP32", "build s"],
        [row],
    )
    validation = artifact.validation
    drift_table(f"TensorRT vs {validation['reference']} on ONNX Runtime (gated)", validation["reports"])
    if "fp32_drift" in validation:  # int8: gated against its Q/DQ graph; drift from fp32 is information
        drift_table(f"TensorRT vs {validation['fp32_reference']} (reported, not gated)", validation["fp32_drift"])


FIRST_VALUES = 4  # enough of an embedding to tell two apart at a glance; --json has the whole vector


def embedding_summary(vector: Any) -> dict[str, Any]:
    """An embedding as `infer --json` gives it: size, L2 norm and every value."""
    import numpy as np

    vector = np.asarray(vector, dtype=np.float32)
    return {
        "size": int(vector.size),
        "norm": float(np.linalg.norm(vector.astype(np.float64))),
        "embedding": vector.tolist(),
    }


def embeddings_table(images: list[Any], vectors: list[Any]) -> None:
    """One row per image: the embedding's size, L2 norm and first values."""
    rows = []
    for image, vector in zip(images, vectors, strict=True):
        summary = embedding_summary(vector)
        first = ", ".join(f"{x:.4f}" for x in summary["embedding"][:FIRST_VALUES])
        more = ", ..." if summary["size"] > FIRST_VALUES else ""
        rows.append([str(image), summary["size"], f"{summary['norm']:.4f}", first + more])
    print_table(None, ["image", "size", "L2 norm", "first values"], rows)


def detections_json(images: list[Any], results: list[list[Any]]) -> list[dict[str, Any]] | list[list[Any]]:
    """`infer --json` of a detector: one image's detections as a list of {box, score, label, class}; several
    images as one {image, detections} each."""
    if len(images) == 1:
        return [d.to_dict() for d in results[0]]
    return [{"image": str(i), "detections": [d.to_dict() for d in r]} for i, r in zip(images, results, strict=True)]


def detections_table(images: list[Any], results: list[list[Any]]) -> None:
    """One row per detection: the label, its score and its box in the image's pixels."""
    rows = []
    for image, found in zip(images, results, strict=True):
        if not found:
            rows.append([str(image), "(nothing above the threshold)", "", "", "", "", ""])
        for rank, d in enumerate(found):
            rows.append([str(image) if rank == 0 else "", d.label, f"{d.score:.4f}", *(f"{v:.1f}" for v in d.box)])
    print_table(None, ["image", "label", "score", "x0", "y0", "x1", "y1"], rows)


def draw_detections(image: Any, found: list[Any], output: Any) -> None:
    """The image with each box drawn and labelled, written to `output` (its format from the file's suffix)."""
    from PIL import Image, ImageDraw

    from vitexport.errors import VitExportError

    try:
        with Image.open(image) as source:
            picture = source.convert("RGB")
    except OSError as e:
        raise VitExportError(f"cannot read {image} to draw on: {e}") from None
    pen = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 300))  # visible on a large photograph, not a smear on a small one
    colours = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")
    for d in found:
        colour = colours[d.class_index % len(colours)]
        x0, y0, x1, y1 = d.box
        pen.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=width)
        text = f"{d.label} {d.score:.2f}"
        # Inside the picture even when the box reaches past its edge (DETR's boxes may).
        corner = (min(max(min(x0, x1), 0), picture.width - 1), min(max(min(y0, y1), 0), picture.height - 1))
        pen.rectangle(pen.textbbox(corner, text), fill=colour)
        pen.text(corner, text, fill="white")
    try:
        picture.save(output)
    except (OSError, ValueError) as e:  # ValueError: a suffix Pillow has no format for
        raise VitExportError(f"cannot write {output}: {getattr(e, 'strerror', None) or e}") from None
