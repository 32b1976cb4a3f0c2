"""How each runtime's variant is built from the fp32 ONNX (the rows of vitexport/variants.py that optimize makes):
ONNX Runtime's fused, FP16 and INT8 graphs, and OpenVINO's IR with its precision hint or NNCF's INT8. Each builder
writes the model file and returns the stage's record of how it was made (`details`); gating is optimize's."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitexport.artifacts import ModelArtifact, Precision
from vitexport.errors import ArtifactError, ExportError, first_line
from vitexport.export.cpu import int8_saturates
from vitexport.export.fp16 import IOType, to_fp16
from vitexport.export.fusion import Fusion, attention_audit, fuse, op_counts
from vitexport.export.gate import ImageSet
from vitexport.export.options import PROTOBUF_LIMIT
from vitexport.export.quantize import QuantMethod, default_method, is_convnet, quantize_onnx

if TYPE_CHECKING:
    import onnx

    from vitexport.export.openvino import Int8Recipe


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:
        raise ArtifactError(f"cannot read {path}: {first_line(e)}") from None


def _save_onnx(model: onnx.ModelProto, output: Path) -> None:
    import onnx

    data = output.with_name(output.name + ".data")
    data.unlink(missing_ok=True)
    try:
        if model.ByteSize() >= PROTOBUF_LIMIT:
            onnx.save_model(model, str(output), save_as_external_data=True, location=data.name)
        else:
            onnx.save_model(model, str(output))
        onnx.checker.check_model(str(output), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejected the optimized graph: {first_line(e)}") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot write {output}: {e}") from None


def onnxruntime_variant(
    artifact: ModelArtifact,
    output: Path,
    precision: Precision,
    fusion: Fusion,
    io_type: IOType,
    quant_method: QuantMethod | None,
    family: str,
    calib: ImageSet | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    model = _load(artifact.path)
    before = op_counts(model)
    details: dict[str, Any] = {"runtime": "onnxruntime", "fuse_attention": fusion.value}
    if fusion is not Fusion.none:
        progress(f"fusing attention ({fusion.value})")
        model, fusions = fuse(model, fusion)
        audit = attention_audit(op_counts(model), fusion)
        # A ViT whose attention was matched has no Softmax left; a CNN has none to begin with.
        if not is_convnet(family) and (audit["softmax"] or not audit["fused_attention"]):
            raise ExportError(
                f"attention fusion ({fusion.value}) incomplete: {audit['fused_attention']} fused blocks, "
                f"{audit['softmax']} Softmax left"
            )
        details |= {"fusions": fusions, "attention": audit}
    if precision is Precision.fp16:
        progress("converting to FP16")
        model = to_fp16(model, io_type=io_type)
        details["io_type"] = io_type.value
    if precision is Precision.int8:
        method = quant_method or default_method(family)
        progress(f"quantizing to INT8 ({method.value})")
        with tempfile.TemporaryDirectory(prefix="vitexport-opt-") as tmp:
            fused = Path(tmp) / "fused.onnx"
            _save_onnx(model, fused)
            quantize_onnx(
                fused,
                output,
                method=method,
                input_name=artifact.input_name,
                calibration=None if calib is None else calib.images,
                masks=None if calib is None else calib.masks,
                mask_name=artifact.mask_name,
            )
            model = _load(output)
        count = 0 if calib is None else len(calib.images)
        details["quantization"] = {"method": method.value, "calibration_images": count}
        details["quantization"] |= {"weight_bits": 7} if int8_saturates() else {}
    progress("saving and checking the graph")
    _save_onnx(model, output)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return details | {"op_counts": {"before": before, "after": op_counts(model)}, "opset": opset}


def openvino_variant(
    artifact: ModelArtifact,
    output: Path,
    precision: Precision,
    family: str,
    calib: ImageSet | None,
    recipe: Int8Recipe | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    from vitexport.export import openvino as ovx

    before = op_counts(_load(artifact.path))
    progress("converting to OpenVINO IR")
    model = ovx.convert_onnx(artifact.path)
    details: dict[str, Any] = {"runtime": "openvino", "fuse_attention": "none"}
    if precision is Precision.int8:
        if calib is None or recipe is None:  # optimize asks for calibration images before building
            raise ExportError("OpenVINO INT8 needs calibration images: give --calibration DIR")
        progress(f"NNCF post-training quantization ({recipe.name})")
        model = ovx.quantize_int8(
            model,
            calib.images,
            recipe,
            input_name=artifact.input_name,
            masks=calib.masks,
            mask_name=artifact.mask_name,
        )
        count = len(calib.images)
        details["quantization"] = {"method": "nncf-ptq", "recipe": recipe.name, "calibration_images": count}
        details["quantization"] |= {"weight_bits": 7} if int8_saturates() else {}
    ovx.save_ir(model, output)
    after: dict[str, int] = {}
    for op in model.get_ordered_ops():
        after[op.get_type_name()] = after.get(op.get_type_name(), 0) + 1
    details |= {
        "inference_precision": ovx.OV_PRECISION[precision.value],
        # What this machine's CPU plugin computes the floating-point ops in, read back from the compiled model.
        "executes_as": ovx.execution_precision(output, precision.value),
        "cpu_capabilities": ovx.cpu_capabilities(),
        "native_bf16": ovx.native_bf16(),
        "op_counts": {"before": before, "after": dict(sorted(after.items(), key=lambda kv: (-kv[1], kv[0])))},
    }
    return details
