"""OpenVINO variants: an FP32 IR run at the precision its sidecar's hint names (f32, bf16), and an INT8 IR from NNCF
post-training quantization on calibration images; each passes its precision's gate on labelled digits."""

from __future__ import annotations

import numpy as np
import pytest

from vitexport.artifacts import load_artifact
from vitexport.errors import ExportError
from vitexport.export.cpu import cpu_flags, int8_saturates
from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.export.runners import load_runner

pytest.importorskip("openvino")


@pytest.mark.parametrize("precision", [Precision.fp32, Precision.bf16])
def test_float_ir(digits, precision, tmp_path):
    variant = optimize(
        digits.onnx, runtime=Runtime.openvino, precision=precision, images=digits.test, output=tmp_path / "m.xml"
    )
    assert variant.format == "openvino" and variant.path.with_suffix(".bin").is_file()
    assert load_artifact(variant.path) == variant  # the sidecar round-trips
    # OpenVINO honours a bf16 hint on any AVX-512 CPU (natively with AVX512_BF16/AMX); on an AVX2-only CPU (a Zen 3
    # EPYC here) it runs f32, and the sidecar says so. f32 stays f32.
    hint = {"fp32": "f32", "bf16": "bf16"}[precision.value]
    runs_as = hint if "avx512f" in cpu_flags() else "f32"
    assert variant.details["inference_precision"] == hint and variant.details["executes_as"] == runs_as
    assert isinstance(variant.details["native_bf16"], bool)
    assert variant.details["op_counts"]["before"]["Softmax"] == 2
    gate = variant.validation
    assert gate["passed"] and gate["accuracy"]["top1_drop"] <= 0.5
    if runs_as == "f32":
        assert gate["images"][0]["max_abs"] < 1e-4
    else:  # BF16 really ran: it drifts, within its budget
        assert 1e-4 < gate["images"][0]["max_abs"] < 0.5


@pytest.mark.integration  # NNCF's INT8 calibration and the gate
def test_nncf_int8_ir(digits, tmp_path):
    variant = optimize(
        digits.onnx,
        runtime=Runtime.openvino,
        precision=Precision.int8,
        calibration=digits.train,
        images=digits.test,
        output=tmp_path / "int8.xml",
    )
    assert variant.details["op_counts"]["after"]["FakeQuantize"] > 0
    quantization = {"method": "nncf-ptq", "recipe": "transformer", "calibration_images": 300}
    quantization |= {"weight_bits": 7} if int8_saturates() else {}  # NNCF's overflow fix on AVX2-only CPUs
    assert variant.details["quantization"] == quantization  # NNCF's recommended recipe passed: no other tried
    assert "rejected_recipes" not in variant.details
    assert variant.validation["passed"] and variant.validation["accuracy"]["top1_drop"] <= 1.0
    logits = load_runner(variant)(np.zeros((3, 3, 64, 64), np.float32))[0]
    assert logits.shape == (3, 10)


def test_openvino_int8_needs_calibration(digits, tmp_path):
    with pytest.raises(ExportError, match="--calibration"):
        optimize(digits.onnx, runtime=Runtime.openvino, precision=Precision.int8, output=tmp_path / "x.xml")


def test_openvino_output_is_xml(digits, tmp_path):
    with pytest.raises(ExportError, match=r"\.xml"):
        optimize(digits.onnx, runtime=Runtime.openvino, output=tmp_path / "x.onnx")
