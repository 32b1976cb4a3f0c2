"""Attention fusion, audited by op counts: a fused ViT/DeiT graph holds one fused attention op per block and no
Softmax, ONNX Runtime's fusion also its skip layer norms and bias GELUs, and computes what the unfused graph computes.
(Every family's fusion through optimize, against PyTorch: tests/test_families_contract.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vitexport.errors import ExportError
from vitexport.export.fusion import Fusion, attention_audit, fuse, op_counts
from vitexport.export.onnx import export_onnx
from vitexport.export.optimize import Precision, Runtime, optimize
from vitexport.models import get_spec
from vitexport.ort import ort_session


@pytest.fixture(params=["test_vit", "test_deit_distilled"])
def exported(request, tiny):
    return tiny(request.param).onnx


def _outputs(path, size: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((3, 3, size, size), dtype=np.float32)
    return ort_session(path).run(None, {"pixel_values": x})[0]


def test_ort_fusion_leaves_no_softmax(exported, tmp_path):
    depth = get_spec(exported.model).arch.depth
    fused, fusions = fuse(onnx.load(exported.path), Fusion.ort)
    counts = op_counts(fused)
    assert "Softmax" not in counts
    assert counts["com.microsoft::MultiHeadAttention"] == depth
    assert counts["com.microsoft::SkipLayerNormalization"] == 2 * depth
    assert counts["com.microsoft::BiasGelu"] == depth
    assert fusions["sdpa"] == depth
    onnx.save(fused, tmp_path / "fused.onnx")
    size = exported.preprocess.input_size
    np.testing.assert_allclose(_outputs(tmp_path / "fused.onnx", size), _outputs(exported.path, size), atol=1e-4)


def test_onnx_fusion_emits_opset23_attention(exported, tmp_path):
    depth = get_spec(exported.model).arch.depth
    fused, fusions = fuse(onnx.load(exported.path), Fusion.onnx)
    counts = op_counts(fused)
    assert "Softmax" not in counts
    assert counts["Attention"] == depth == fusions["attention"]
    assert not [k for k in counts if "::" in k], "the TensorRT graph must hold standard ONNX ops only"
    assert next(o.version for o in fused.opset_import if o.domain == "") == 23
    onnx.checker.check_model(fused, full_check=True)
    onnx.save(fused, tmp_path / "fused.onnx")
    size = exported.preprocess.input_size
    np.testing.assert_allclose(_outputs(tmp_path / "fused.onnx", size), _outputs(exported.path, size), atol=1e-4)


def test_optimize_fuses_by_default_and_records_op_counts_and_audit(exported, tmp_path):
    variant = optimize(exported, runtime=Runtime.onnxruntime, precision=Precision.fp32, output=tmp_path / "v.onnx")
    depth = get_spec(exported.model).arch.depth
    before, after = variant.details["op_counts"]["before"], variant.details["op_counts"]["after"]
    assert before["Softmax"] == depth and "Softmax" not in after
    assert variant.details["attention"] == {"fused_attention": depth, "softmax": 0}
    assert variant.validation["passed"]
    assert variant.sidecar.is_file()


def test_audit_counts_unfused_blocks():
    assert attention_audit({"Softmax": 12, "MatMul": 48}, Fusion.ort) == {"fused_attention": 0, "softmax": 12}
    assert attention_audit({"Attention": 12}, Fusion.onnx) == {"fused_attention": 12, "softmax": 0}


def test_resnet_passes_through_fusion(tmp_path):
    artifact = export_onnx("test_resnet", tmp_path / "r.onnx", validate=False)
    variant = optimize(artifact, output=tmp_path / "r.ort.onnx")
    assert variant.details["attention"] == {"fused_attention": 0, "softmax": 0}
    assert variant.validation["passed"]


def test_onnx_fusion_rejects_newer_opsets():
    model = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], []), opset_imports=[onnx.helper.make_opsetid("", 24)]
    )
    with pytest.raises(ExportError, match="opset 23"):
        fuse(model, Fusion.onnx)
