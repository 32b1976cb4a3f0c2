"""Optimize and gate a detector: test_detr (random weights) through every variant kind on real ONNX Runtime and
OpenVINO, graded by the detection gate on scikit-image's photographs (padded onto the canvas) and random inputs; a
variant with its class head scrambled and a budget set too tight are rejected with the metric named."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitexport.artifacts import load_artifact
from vitexport.cli import app
from vitexport.errors import ValidationError
from vitexport.export.detection_gate import box_iou, confident, evaluate_detection, gate_photos
from vitexport.export.gate import check_gate, hold_out, load_image_folder
from vitexport.export.onnx import export_onnx
from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.export.photos import CALIBRATION_PHOTOS, detection_photos
from vitexport.export.quantize import QuantMethod
from vitexport.export.runners import load_runner
from vitexport.export.validate import DETECTION_TOLERANCES

runner = CliRunner()


@pytest.fixture(scope="module")
def detr(tmp_path_factory):
    # Unvalidated: test_vitexport_detr.py checks the export against PyTorch; this is the gate's fp32 reference.
    return export_onnx("test_detr", tmp_path_factory.mktemp("detr") / "detr.onnx", validate=False)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """The calibration photographs in three shapes each (whole, portrait, square): 12 images, 6 of them padded."""
    folder = tmp_path_factory.mktemp("calibration")
    for i, (name, image) in enumerate(detection_photos(CALIBRATION_PHOTOS)):
        Image.fromarray(image).save(folder / f"{i:02d}_{name}.png")
    return folder


def test_detector_images_come_with_masks_and_keep_them_when_held_out(detr, calibration):
    images = load_image_folder(calibration, detr.preprocess)
    S = detr.preprocess.input_size
    assert images.images.shape == (12, 3, S, S) and images.masks.shape == (12, S, S)
    padded = (images.masks == 0).any(axis=(1, 2))
    assert padded.sum() == 6  # squares (and the square photos) fill the canvas; the rest is padded below or right
    assert not (images.images * (images.masks[:, None] == 0)).any()  # the padding is zero
    held, rest = hold_out(images, 5)
    assert held.masks.shape[0] == len(held.images) == 3 and rest.masks.shape[0] == 9
    assert (gate_photos(detr.preprocess).masks == 0).any(axis=(1, 2)).sum() == 6


def test_confident_queries_fall_back_to_the_top_scores_when_none_passes_the_threshold():
    logits = np.zeros((2, 10, 5), np.float32)  # uniform: nothing over 0.5
    logits[0, 7, 2] = 9.0  # one confident query in the first image
    logits[1, :, 1] = np.arange(10) * 0.01  # the second image's best scores rise with the index
    chosen, over = confident(logits)
    assert over.sum() == 1 and over[0, 7]
    assert chosen[0, 7] and chosen[0].sum() == 3  # the confident one among its top 3
    assert chosen[1].tolist() == [False] * 7 + [True] * 3
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    assert box_iou(boxes, boxes + np.array([[0, 0, 0, 0], [0.2, 0, 0, 0]])).round(6).tolist() == [1.0, 0.0]


VARIANTS = {
    "ort-fp32-fused": (Runtime.onnxruntime, Precision.fp32, {}),
    "ort-fp16": (Runtime.onnxruntime, Precision.fp16, {}),
    "ort-int8-dynamic": (Runtime.onnxruntime, Precision.int8, {"quant_method": QuantMethod.dynamic}),
    "ort-int8-static": (Runtime.onnxruntime, Precision.int8, {"quant_method": QuantMethod.static}),
    "openvino-bf16": (Runtime.openvino, Precision.bf16, {}),
    "openvino-int8": (Runtime.openvino, Precision.int8, {}),
}


@pytest.fixture(scope="module")
def variants(detr, calibration, tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    built = {}
    for name, (runtime, precision, options) in VARIANTS.items():
        calib = calibration if precision is Precision.int8 and name != "ort-int8-dynamic" else None
        output = folder / (f"{name}.xml" if runtime is Runtime.openvino else f"{name}.onnx")
        built[name] = optimize(detr, runtime=runtime, precision=precision, calibration=calib, output=output, **options)
    return built


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_kind_passes_the_detection_gate(variants, name):
    validation = load_artifact(variants[name].path).validation  # what the sidecar records
    assert validation["passed"] and validation["task"] == "detection" and not validation["failures"]
    metrics = {m["inputs"]: m for m in validation["detection"]}
    assert set(metrics) == {"random", "images"}
    photos = 3 if name in ("ort-int8-static", "openvino-int8") else 9  # calibrated: held out of the 12
    assert metrics["images"]["images"] == photos and metrics["images"]["queries"] >= 3 * photos
    tol = DETECTION_TOLERANCES[variants[name].precision]
    assert metrics["images"]["class_agreement"] >= tol.min_class_agreement
    assert metrics["images"]["iou_min"] >= tol.min_iou and metrics["images"]["box_l1_max"] <= tol.max_box_l1
    assert {r["output"] for r in validation["images"]} == {"logits (images)", "pred_boxes (images)"}


def test_fusion_matches_every_attention_block_of_detr(variants):
    details = variants["ort-fp32-fused"].details
    assert details["attention"] == {"fused_attention": 3, "softmax": 0}  # encoder self, decoder self and cross


def test_int8_calibration_fed_the_masks(variants, detr, calibration):
    """Both INT8 builds calibrated on padded photographs through both inputs (a calibration without the mask would
    not run: the graph has two inputs), and the OpenVINO variant runs on a padded photograph with its mask as the fp32
    model does."""
    for name in ("ort-int8-static", "openvino-int8"):
        assert variants[name].details["quantization"]["calibration_images"] == 9
    photos = load_image_folder(calibration, detr.preprocess)
    padded = np.flatnonzero((photos.masks == 0).any(axis=(1, 2)))[:2]
    x, mask = photos.images[padded], photos.masks[padded]
    reference, candidate = load_runner(detr), load_runner(variants["openvino-int8"])
    for ref, out in zip(reference(x, mask), candidate(x, mask), strict=True):
        assert out.shape == ref.shape and np.abs(out - ref).max() < 0.05


@pytest.fixture(scope="module")
def scrambled(variants, tmp_path_factory):
    """The fused fp32 variant with its class head's four classes reversed (no-object kept): the same ops and value
    ranges, boxes untouched; only the per-query classes are wrong."""
    good = variants["ort-fp32-fused"]
    model = onnx.load(good.path)
    head = next(t for t in model.graph.initializer if list(t.dims) in ([32, 5], [5, 32]))
    w = onnx.numpy_helper.to_array(head).copy()
    axis = list(w.shape).index(5)
    w = np.swapaxes(w, 0, axis)
    w[:4] = w[3::-1].copy()
    head.CopyFrom(onnx.numpy_helper.from_array(np.swapaxes(w, 0, axis), head.name))
    path = tmp_path_factory.mktemp("scrambled") / "scrambled.onnx"
    onnx.save(model, path)
    good.with_(path=path).save()
    return path


def test_cli_validate_rejects_a_scrambled_class_head_naming_the_metric(detr, scrambled):
    result = runner.invoke(app, ["validate", str(scrambled), "--reference", str(detr.path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "fp32 variant over budget" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "class agreement 0.000 < 1 on 27 confident queries (images)" in result.stderr
    assert "box" not in result.stderr  # the boxes are the reference's


def test_a_budget_too_tight_fails_with_every_metric_over_it(detr, variants):
    tight = replace(DETECTION_TOLERANCES["int8"], max_box_l1=1e-7, min_iou=0.9999999)
    report = evaluate_detection(
        load_runner(variants["ort-int8-dynamic"]),
        load_runner(detr),
        precision="int8",
        input_size=detr.preprocess.input_size,
        images=gate_photos(detr.preprocess),
        tolerance=tight,
    )
    assert not report.passed and any("box L1" in f for f in report.failures)
    assert any(f.startswith("worst box IoU") and f.endswith("(images)") for f in report.failures)
    assert not any("(random)" in f for f in report.failures)  # INT8: random inputs are reported, not gated
    with pytest.raises(ValidationError, match=r"int8 variant over budget: .*box L1"):
        check_gate(report)


def test_cli_optimize_a_detector_writes_its_detection_metrics(detr, tmp_path):
    out = tmp_path / "detr.fp16.onnx"
    result = runner.invoke(app, ["optimize", str(detr.path), "--precision", "fp16", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["details"]["gate_images"] == "scikit-image photographs (9)"
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["task"] == "detection" and sidecar["mask_name"] == "pixel_mask"
    assert [m["inputs"] for m in sidecar["validation"]["detection"]] == ["random", "images"]
    assert sidecar["validation"]["detection"][1]["class_agreement"] == 1.0
    graph = onnx.load(out)
    mask_input = next(i for i in graph.graph.input if i.name == "pixel_mask")
    assert mask_input.type.tensor_type.elem_type == onnx.TensorProto.INT64  # the mask stays int64 in FP16
    result = runner.invoke(app, ["validate", str(out), "--reference", str(detr.path)])
    assert result.exit_code == 0, result.output
