"""FP16 ONNX: weights and compute in half precision, normalisations, Softmax and reductions kept in FP32.

This is the graph a strongly typed TensorRT 11 build consumes (precision lives in the graph there), and it runs on
ONNX Runtime's CPU provider for validation. LayerNorm stays FP32 because an FP16 LayerNorm after attention
overflows in TensorRT; Softmax and reductions stay FP32 because their sums lose precision in FP16.
"""

from __future__ import annotations

import warnings
from enum import Enum
from typing import TYPE_CHECKING

from vitexport.errors import ExportError, first_line

if TYPE_CHECKING:
    import onnx

KEEP_FP32_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceL2",
    "ReduceSumSquare",
    "Pow",
    "Sqrt",
    "Erf",  # the exact GELU's erf: its FP16 approximation is off by up to 1e-3, larger than the rest of the drift
)


class IOType(str, Enum):
    fp32 = "fp32"  # Casts at the graph edges: a drop-in replacement for the FP32 model
    fp16 = "fp16"  # half-precision input and logits, for pipelines that feed FP16 end to end


def to_fp16(model: onnx.ModelProto, *, io_type: IOType = IOType.fp32) -> onnx.ModelProto:
    """The graph in FP16 with the ops of KEEP_FP32_OPS left in FP32 behind Casts (onnxconverter-common)."""
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        raise ExportError("FP16 conversion needs onnxconverter-common: pip install 'vitexport[cpu-opt]'") from None

    # It warns once per weight below FP16's smallest subnormal that it flushes: expected, not the user's to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            # max_finite_val: weights beyond FP16's range are clamped, not turned into inf. onnxconverter-common
            # rather than ORT's fork of it: ORT's appends its input Casts after their consumers, which onnx.checker
            # rejects.
            half = convert_float_to_float16(
                model,
                keep_io_types=io_type is IOType.fp32,
                op_block_list=list(KEEP_FP32_OPS),
                max_finite_val=65504.0,
                min_positive_val=5.96e-08,
            )
        except Exception as e:
            raise ExportError(f"FP16 conversion failed: {first_line(e)}") from e
    _pin_attention_softmax(half)
    _retarget_float_casts(half)
    return half


def _retarget_float_casts(model: onnx.ModelProto) -> None:
    """Make the graph's own Casts to FLOAT (DETR's int64 pixel mask made float) cast to FLOAT16 where the converter
    turned their output into FLOAT16: it retypes the tensor but leaves the Cast's `to`, which onnx.checker rejects."""
    import onnx

    half = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in half:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16


def _pin_attention_softmax(model: onnx.ModelProto) -> None:
    """Make the standard `Attention` op (opset 23) compute its Softmax in FP32.

    Attention's Softmax is inside the op, out of reach of the block list: with FP16 Q and K the spec computes it in
    FP16. The op's `softmax_precision` attribute is the standard way to ask for FLOAT (ONNX Runtime's CPU kernel
    accepts it). com.microsoft's fused ops have no such attribute and are left as they are.
    """
    import onnx

    for node in model.graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            kept = [a for a in node.attribute if a.name != "softmax_precision"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("softmax_precision", onnx.TensorProto.FLOAT)])
