"""The FP16 graph (TensorRT's input): FP16 weights and MatMuls, FP32 LayerNorm/Softmax/reductions, selectable I/O
types, runnable on ONNX Runtime's CPU provider within the fp16 budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vitexport.errors import ExportError
from vitexport.export.fp16 import KEEP_FP32_OPS, IOType, to_fp16
from vitexport.export.fusion import Fusion
from vitexport.export.onnx import export_onnx
from vitexport.export.optimize import Precision, optimize
from vitexport.export.validate import TOLERANCES
from vitexport.ort import ort_session

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return export_onnx("test_vit", tmp_path_factory.mktemp("fp16") / "vit.onnx", validate=False)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    return types


@pytest.mark.parametrize("fusion", [Fusion.none, Fusion.onnx])
def test_precision_placement(source, fusion, tmp_path):
    variant = optimize(source, precision=Precision.fp16, fuse_attention=fusion, output=tmp_path / "v.onnx")
    assert variant.precision == "fp16"
    model = onnx.load(variant.path)
    types = _value_types(model)
    kept = [n for n in model.graph.node if n.op_type in KEEP_FP32_OPS]
    assert {n.op_type for n in kept} >= {"LayerNormalization"}
    for node in kept:  # LayerNorm, Softmax, reductions compute in FP32
        assert all(types[i] == FLOAT for i in node.input if i), f"{node.op_type} {node.name} is not FP32"
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Attention")]
    assert matmuls and all(types[n.input[0]] == FLOAT16 for n in matmuls)
    # The fused graph has no Softmax node for the loop above to check: Attention's own Softmax must be asked for FP32.
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == (2 if fusion is Fusion.onnx else 0)  # one per block of test_vit
    for node in attention:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("softmax_precision") == FLOAT, f"{node.name} computes its Softmax in FP16"
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == FLOAT16 for t in weights)
    # FP32 I/O by default: a drop-in replacement for the fp32 model.
    assert model.graph.input[0].type.tensor_type.elem_type == FLOAT
    assert variant.validation["passed"]
    assert variant.validation["random"][1]["max_abs"] < TOLERANCES["fp16"].max_abs


def test_fp16_io(source, tmp_path):
    variant = optimize(source, precision=Precision.fp16, io_type=IOType.fp16, output=tmp_path / "io16.onnx")
    model = onnx.load(variant.path)
    assert model.graph.input[0].type.tensor_type.elem_type == FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == FLOAT16
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float16)
    assert ort_session(variant.path).run(None, {"pixel_values": x})[0].dtype == np.float16


def test_fp16_io_needs_fp16_precision(source, tmp_path):
    with pytest.raises(ExportError, match="io-type fp16"):
        optimize(source, precision=Precision.fp32, io_type=IOType.fp16, output=tmp_path / "x.onnx")


def test_large_weights_are_clamped_not_inf():
    w = onnx.numpy_helper.from_array(np.array([[1e6, -1e6], [1.0, 2.0]], np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", FLOAT, [1, 2])],
        [w],
    )
    half = to_fp16(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))
    values = onnx.numpy_helper.to_array(half.graph.initializer[0])
    assert values.dtype == np.float16 and np.isfinite(values).all()
