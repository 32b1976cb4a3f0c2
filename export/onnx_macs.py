"""Multiply-accumulates of one image through an ONNX graph, counted from its shapes, and its parameters: for ONNX
files this tool did not write (`vitexport import`), which have no registry entry to count them from.

Counted as the registry counts (and FLOP counters do): matmuls (MatMul, Gemm and their integer and quantized forms)
and convolutions; elementwise ops, softmax and normalisation are left out. Shapes come from ONNX shape inference
with the image input fixed to 1 x 3 x S x S.
"""

from __future__ import annotations

import math
from pathlib import Path

MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"}
CONVS = {"Conv", "ConvInteger", "QLinearConv"}
# Where each op's weight (or right-hand) input is: QLinear* interleave scales and zero points with the operands.
_B_INPUT = {"QLinearMatMul": 3, "QLinearConv": 3}


def onnx_macs(path: str | Path, input_name: str, size: int) -> int | None:
    """MACs of one S x S image, or None when a matmul or convolution's shapes cannot be inferred (a count that
    left them out would understate the work)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed_dims: tuple[int, ...]
        if value.name == input_name:
            fixed_dims = (1, 3, size, size)
        else:  # another input (a detector's mask): batch 1, the image's size on its other dynamic dims
            fixed_dims = tuple(1 if i == 0 else size for i in range(len(dims)))
        for dim, fixed in zip(dims, fixed_dims, strict=False):
            if dim.HasField("dim_param") or dim.dim_value == 0:
                dim.ClearField("dim_param")
                dim.dim_value = fixed
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return None
    graph = inferred.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    total = 0
    for node in graph.node:
        if node.op_type not in MATMULS | CONVS and node.op_type != "Gemm":
            continue
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[_B_INPUT.get(node.op_type, 1)])
        a = shapes.get(node.input[0])
        if not out or not weight or not a or 0 in out or 0 in weight or 0 in a:
            return None
        if node.op_type in CONVS:
            total += math.prod(out) * math.prod(weight[1:])  # each output: Cin/groups x kh x kw products
        elif node.op_type == "Gemm":
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            total += math.prod(out) * (a[0] if trans_a else a[-1])
        else:
            total += math.prod(out) * a[-1]
    return total


def onnx_params(path: str | Path) -> int:
    """Parameters as the graph stores them: the elements of its float initializers (weights and biases; index and
    shape constants are integers). Exporters store identical tensors once, so a fresh model's count can be a
    little under its framework's."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats)
