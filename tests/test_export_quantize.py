"""INT8 on ONNX Runtime: dynamic for the ViT (on the ORT-fused graph), static Q/DQ for ResNet with calibration
images; each variant is a valid graph (onnx.checker, ONNX Runtime) that passes the int8 gate."""

from __future__ import annotations

import onnx
import pytest

from vitexport.errors import ExportError
from vitexport.export.cpu import int8_saturates
from vitexport.export.fusion import Fusion
from vitexport.export.onnx import export_onnx
from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.export.quantize import QuantMethod


def test_dynamic_int8_vit_passes_the_gate_on_labelled_images(digits, tmp_path):
    variant = optimize(digits.onnx, precision=Precision.int8, images=digits.test, output=tmp_path / "int8.onnx")
    counts = variant.details["op_counts"]["after"]
    assert variant.details["quantization"]["method"] == "dynamic"
    assert counts.get("DynamicQuantizeLinear", 0) > 0 and counts.get("MatMulInteger", 0) > 0
    assert "Softmax" not in counts and counts["com.microsoft::MultiHeadAttention"] == 2  # fused, then quantized
    onnx.checker.check_model(str(variant.path), full_check=True)
    accuracy = variant.validation["accuracy"]
    assert accuracy["images"] == 360 and accuracy["reference_top1"] > 90
    assert accuracy["top1_drop"] <= 1.0


@pytest.mark.integration  # static INT8 calibration and the gate
def test_static_qdq_resnet_with_calibration(digits, tmp_path):
    source = export_onnx("test_resnet", tmp_path / "resnet.onnx", validate=False)
    variant = optimize(source, precision=Precision.int8, calibration=digits.train, output=tmp_path / "r8.onnx")
    counts = variant.details["op_counts"]["after"]
    expected = {"method": "static", "calibration_images": 300} | ({"weight_bits": 7} if int8_saturates() else {})
    assert variant.details["quantization"] == expected
    # Without --images the gate grades the variant on calibration images kept out of the calibration.
    assert variant.details["gate_images"] == "held out of the calibration folder (75)"
    assert len(variant.validation["images"]) == 1 and variant.validation["images"][0]["batch_size"] == 75
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"] / 2
    assert "BatchNormalization" not in counts  # folded into the convolutions before quantization
    assert variant.validation["passed"]


def test_static_needs_calibration(digits, tmp_path):
    with pytest.raises(ExportError, match="--calibration"):
        optimize(digits.onnx, precision=Precision.int8, quant_method=QuantMethod.static, output=tmp_path / "x.onnx")


def test_int8_refuses_the_opset23_attention_graph(digits, tmp_path):
    with pytest.raises(ExportError, match="opset-23"):
        optimize(digits.onnx, precision=Precision.int8, fuse_attention=Fusion.onnx, output=tmp_path / "x.onnx")


def test_bf16_is_not_an_onnxruntime_precision(digits, tmp_path):
    with pytest.raises(ExportError, match="openvino"):
        optimize(digits.onnx, runtime=Runtime.onnxruntime, precision=Precision.bf16, output=tmp_path / "x.onnx")
