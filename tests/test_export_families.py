"""BEiT, MAE, Swin and MobileViT through the optimize stage, on their tiny configs: FP16, OpenVINO BF16/INT8 and ONNX
Runtime INT8 variants that each pass their gate on real photographs: INT8 calibrated on crops of some photos, every
variant gated on crops of others. (Fused attention of every family, and its MACs: tests/test_families_contract.py.)

The weights are random but seeded, and every parameter is perturbed: the zero-initialised relative position tables
and the constant layer scales of a fresh model would leave the attention bias (and Swin's mask) out of the numbers.
One export per family (the session's `tiny`, tests/conftest.py); the variants are parametrized over it.
"""

from __future__ import annotations

import logging

import onnx
import pytest

from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.export.photos import GATE_PHOTOS, photo_folder
from vitexport.models import get_spec

pytest.importorskip("openvino")
# Every test here builds a variant end to end (FP16 conversion, INT8 calibration, OpenVINO compilation) and gates it on
# photographs: minutes in all, left out of the fast lane.
pytestmark = pytest.mark.integration
pytest.importorskip("skimage")

FAMILIES = ["test_beit", "test_mae", "test_swin", "test_mobilevit"]
CALIBRATION_IMAGES = 64  # measured: 32 crops left NNCF INT8 of MAE at the budget's edge (cosine 0.9806, top-1 0.85)
GATE_IMAGES = 40


@pytest.fixture(scope="module")
def photos():
    return photo_folder(CALIBRATION_IMAGES), photo_folder(GATE_IMAGES, photos=GATE_PHOTOS)


@pytest.fixture(params=FAMILIES)
def exported(request, tiny):
    return tiny(request.param).onnx


@pytest.fixture(autouse=True)
def _quiet():
    # ORT's quantizer logs a pre-processing hint on the root logger at every call.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _blocks(name: str) -> int:
    """Attention blocks of the model: every one must be fused."""
    return get_spec(name).arch.depth


VARIANTS = {
    "onnxruntime-fp16": (Runtime.onnxruntime, Precision.fp16),
    "openvino-bf16": (Runtime.openvino, Precision.bf16),
    "openvino-int8": (Runtime.openvino, Precision.int8),
    "onnxruntime-int8": (Runtime.onnxruntime, Precision.int8),
}


@pytest.mark.parametrize("variant_name", list(VARIANTS))
def test_variant_passes_its_gate_on_photographs(exported, photos, variant_name, tmp_path):
    artifact = exported
    runtime, precision = VARIANTS[variant_name]
    calibration, gate_images = photos
    suffix = ".xml" if runtime is Runtime.openvino else ".onnx"
    variant = optimize(
        artifact,
        runtime=runtime,
        precision=precision,
        calibration=calibration if precision is Precision.int8 else None,
        images=gate_images,
        output=tmp_path / f"variant{suffix}",
    )
    report = variant.validation
    print(
        f"\n{artifact.model} {variant_name}: cosine {report['images'][0]['cosine']:.6f}, top-1 agreement "
        f"{report['images'][0]['top1_agreement']:.3f}, recipe {variant.details.get('quantization', {}).get('recipe')}"
    )
    assert variant.validation["passed"] and variant.sidecar.is_file()
    assert variant.details["gate_images"] == f"--images ({GATE_IMAGES})"
    images = variant.validation["images"][0]
    assert images["batch_size"] == GATE_IMAGES and images["cosine"] >= variant.validation["tolerance"]["min_cosine"]
    after = variant.details["op_counts"]["after"]
    if variant_name == "onnxruntime-fp16":
        # LayerNorm and Softmax stay FP32: the standard Attention op is asked for an FP32 softmax.
        model = onnx.load(variant.path)
        attention = [n for n in model.graph.node if n.op_type == "Attention"]
        assert len(attention) == _blocks(artifact.model)
        assert all(any(a.name == "softmax_precision" and a.i == 1 for a in n.attribute) for n in attention)
    if variant_name == "openvino-bf16":
        # OpenVINO reads the unfused graph and fuses attention when it compiles: its CPU plugin's runtime graph holds
        # no Softmax layer (each MatMul-Softmax-MatMul became one Snippets `Subgraph`).
        from vitexport.export.openvino import compile_ir

        runtime_graph = compile_ir(variant.path, "bf16").get_runtime_model()
        layers = [op.get_rt_info()["layerType"].astype(str) for op in runtime_graph.get_ordered_ops()]
        assert "Softmax" not in layers and layers.count("Subgraph") >= _blocks(artifact.model)
    if variant_name == "openvino-int8":
        assert after["FakeQuantize"] > 0 and variant.details["quantization"]["calibration_images"] > 0
    if variant_name == "onnxruntime-int8":
        assert after.get("MatMulInteger", 0) + after.get("QLinearConv", 0) + after.get("QuantizeLinear", 0) > 0
