"""The papers' throughput tables measured in a `vitexport bench` run: the DeiT paper's Table 1, the Swin paper's
Table 1(a) and the DETR paper's Table 1, as ratios within the run beside the papers' V100 figures."""

from __future__ import annotations

from typing import Any

from vitexport.bench.verdicts import best_gated, ok
from vitexport.tasks import CLASSIFICATION, get_task

# The DeiT paper's Table 1 throughput (img/s, one 16 GB V100, largest batch, 224 px), with its ratio to ResNet-50.
PAPER_V100 = {
    "deit_tiny_patch16_224": 2536,
    "deit_small_patch16_224": 940,
    "deit_base_patch16_224": 292,
    "resnet50": 1226,
    "resnet101": 754,
    "resnet152": 526,
}
PAPER_NAMES = {
    "deit_tiny_patch16_224": "DeiT-Ti",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "resnet152": "ResNet-152",
}
REFERENCE_MODEL = "resnet50"
# The Swin paper's Table 1(a) throughput (img/s, one V100, measured with timm's code, as the paper says),
# with its ratio to DeiT-S: at 224 px, and the 384 px pair Swin-B / ViT-B/16.
SWIN_PAPER_V100 = {
    "swin_tiny_patch4_window7_224": 755.2,
    "swin_small_patch4_window7_224": 436.9,
    "swin_base_patch4_window7_224": 278.1,
    "deit_small_patch16_224": 940.4,
    "deit_base_patch16_224": 292.3,
    "swin_base_patch4_window12_384": 84.7,
    "vit_base_patch16_384": 85.9,
}
SWIN_PAPER_NAMES = {
    "swin_tiny_patch4_window7_224": "Swin-T",
    "swin_small_patch4_window7_224": "Swin-S",
    "swin_base_patch4_window7_224": "Swin-B",
    "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B",
    "swin_base_patch4_window12_384": "Swin-B 384²",
    "vit_base_patch16_384": "ViT-B/16 384²",
}
SWIN_REFERENCE = "deit_small_patch16_224"
# The DETR paper's Table 1 (frames per second on one V100, one image at a time, COCO val images of about 800 x 1200;
# GFLOPs counted by fvcore, one multiply-add as one FLOP, over the first 100 of them), ratios to DETR-R50.
DETR_PAPER_V100 = {"detr_resnet50": 28, "detr_resnet101": 20, "faster_rcnn_r50_fpn": 26}
DETR_PAPER_GFLOPS = {"detr_resnet50": 86, "detr_resnet101": 152, "faster_rcnn_r50_fpn": 180}
DETR_PAPER_NAMES = {
    "detr_resnet50": "DETR-R50",
    "detr_resnet101": "DETR-R101",
    "faster_rcnn_r50_fpn": "Faster RCNN-FPN R50",
}
DETR_REFERENCE = "detr_resnet50"
DETR_BATCH = "1"  # the paper's frames per second are one image at a time
# The one-backend column of the paper table (ratios that do not mix runtimes): the first of these measured for
# every model of the run.
SAME_BACKENDS = ("onnxruntime", "onnxruntime-plain", "torch")


def paper_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The DeiT paper's throughput table, measured here: at the largest batch size, our best gated path per model
    and, for ratios within one runtime, the onnxruntime fp32 path; the paper's V100 figures beside them."""
    return _paper_rows(result, PAPER_V100, PAPER_NAMES, REFERENCE_MODEL, "resnet50")


def swin_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The Swin paper's Table 1(a) throughput, measured here, as `paper_table` does for the DeiT paper's: ratios
    to DeiT-S measured in the same run, the paper's V100 ratios to its DeiT-S beside them. Only the run's models
    that are in the paper's table get a row (and the paper's rows that were not run, so the table keeps its form)."""
    return _paper_rows(result, SWIN_PAPER_V100, SWIN_PAPER_NAMES, SWIN_REFERENCE, "deit_s")


def detr_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The DETR paper's Table 1, measured here: frames per second at batch 1 on the fixed 800 x 800 canvas, as ratios
    to DETR-R50 measured in the same run, the paper's V100 figures and ratios beside them. Faster R-CNN is the
    paper's row only (torchvision's detectors cannot run here: its CPU build for this torch is not on PyPI)."""
    rows = _paper_rows(result, DETR_PAPER_V100, DETR_PAPER_NAMES, DETR_REFERENCE, "detr_r50", batch=DETR_BATCH)
    names = {v: k for k, v in DETR_PAPER_NAMES.items()}
    for r in rows:
        key = names.get(r["model"], r["model"])
        r["paper_gflops"] = DETR_PAPER_GFLOPS.get(key)
        r["gflop_per_image"] = result["models"].get(key, {}).get("gflop_per_image")
    return rows


def _paper_rows(
    result: dict[str, Any],
    paper_v100: dict[str, float],
    paper_names: dict[str, str],
    reference: str,
    suffix: str,
    batch: str | None = None,
) -> list[dict[str, Any]]:
    models = result["models"]
    ref = models.get(reference)
    bs = batch or str(max(result["settings"]["batch_sizes"]))
    # The DeiT table lists every classifier of the run; the Swin and DETR tables only their paper's models.
    if reference == REFERENCE_MODEL:
        listed = {n: m for n, m in models.items() if get_task(m.get("task", CLASSIFICATION.name)) is CLASSIFICATION}
    else:
        listed = {n: m for n, m in models.items() if n in paper_v100}
    same_backend = next(
        (
            b
            for b in SAME_BACKENDS
            if all(ok(m["in_process"].get(b, {})) and bs in m["in_process"][b]["batches"] for m in listed.values())
        ),
        SAME_BACKENDS[0],
    )
    ref_best = best_gated(ref, bs) if ref else None
    ref_same_rate = _rate(ref["in_process"].get(same_backend, {}), bs) if ref else None
    paper_ref = paper_v100[reference]
    rows = []
    for name, m in listed.items():
        best = best_gated(m, bs)
        same_rate = _rate(m["in_process"].get(same_backend, {}), bs)
        paper = paper_v100.get(name)
        rows.append(
            {
                "model": paper_names.get(name, name),
                "params_m": round(m["params"] / 1e6, 1),
                "resolution": m["resolution"],
                "batch_size": int(bs),
                "best_backend": best[0] if best else None,
                "best_img_s": best[1] if best else None,
                f"best_ratio_to_{suffix}": round(best[1] / ref_best[1], 4) if best and ref_best else None,
                "same_backend": same_backend,
                "same_backend_img_s": same_rate,
                f"same_backend_ratio_to_{suffix}": _ratio(same_rate, ref_same_rate),
                "paper_v100_img_s": paper,
                f"paper_ratio_to_{suffix}": round(paper / paper_ref, 4) if paper else None,
            }
        )
    rows += [  # the paper's other rows, so the table keeps its form
        {
            "model": paper_names[name],
            "measured": False,
            "batch_size": int(bs),
            "paper_v100_img_s": paper,
            f"paper_ratio_to_{suffix}": round(paper / paper_ref, 4),
        }
        for name, paper in paper_v100.items()
        if name not in models
    ]
    return rows


def _rate(entry: dict[str, Any], bs: str) -> float | None:
    """img/s of a measured path at this batch size (None: not measured)."""
    return entry["batches"][bs]["img_s"] if ok(entry) and bs in entry["batches"] else None


def _ratio(rate: float | None, reference: float | None) -> float | None:
    return round(rate / reference, 4) if rate and reference else None


def swin_table_notes(rows: list[dict[str, Any]], tolerance: float = 0.15) -> list[str]:
    """Plain sentences comparing each measured ratio to DeiT-S (one runtime, then our best gated paths) with the
    paper's V100 ratio: "differs" when they are more than `tolerance` apart, relative to the paper's."""
    notes = []
    for r in rows:
        paper = r.get("paper_ratio_to_deit_s")
        if r.get("measured") is False or paper is None or r["model"] == SWIN_PAPER_NAMES[SWIN_REFERENCE]:
            continue
        parts = []
        for label, key in ((r["same_backend"], "same_backend_ratio_to_deit_s"), ("best gated", "best_ratio_to_deit_s")):
            ours = r.get(key)
            if ours is None:
                parts.append(f"{label}: no ratio measured")
                continue
            change = ours / paper - 1
            verdict = (
                "as on the V100"
                if abs(change) <= tolerance
                else f"{'faster' if change > 0 else 'slower'} relative to DeiT-S than on the V100 "
                f"({change * 100:+.0f}%)"
            )
            parts.append(f"{label} {ours:.2f} vs paper {paper:.2f}, {verdict}")
        notes.append(f"{r['model']}: " + "; ".join(parts) + ".")
    return notes
