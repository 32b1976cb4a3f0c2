"""OpenVINO IR for the CPU path: FP32 IR run at the precision of an inference hint, or INT8 by NNCF post-training
quantization.

BF16 is not a property of the IR: OpenVINO's CPU plugin executes an FP32 IR in BF16 when its
INFERENCE_PRECISION_HINT says so (and by default on CPUs with AVX-512 BF16 or AMX), so a BF16 artifact is the FP32
IR plus the hint in its sidecar, and every runner compiles it with that hint. On a CPU without BF16 instructions
the plugin silently runs FP32; `execution_precision` reports what it will actually do.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vitexport.errors import ExportError, first_line

if TYPE_CHECKING:  # OpenVINO is imported where it is used (and has no type information: its objects are Any)
    import openvino as ov

# The hint's values, by our precision names. INT8 sets none: the plugin then runs the ops NNCF left in floating
# point in BF16 where the CPU has it (OpenVINO's default there) and in FP32 elsewhere.
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


def _ov() -> ModuleType:
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("the openvino runtime needs OpenVINO: pip install 'vitexport[cpu-opt]'") from None
    return ov


def cpu_capabilities() -> list[str]:
    return list(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def execution_precision(path: Path, precision: str) -> str:
    """The floating-point precision OpenVINO's CPU plugin really computes in for this IR and hint on this machine
    (it falls back to f32 for hints the CPU cannot honour, e.g. f16 without AVX-512 FP16 or AMX)."""
    import openvino.properties.hint as hints

    floating = str(compile_ir(path, precision).get_property(hints.inference_precision).get_type_name())
    return f"int8+{floating}" if precision == "int8" else floating


def native_bf16() -> bool:
    """Whether the CPU has BF16 instructions (AVX512_BF16, AMX). Without them OpenVINO still honours a bf16 hint, by
    emulation: measured ~30x slower than f32 on an AVX-512 VNNI Xeon without AVX512_BF16."""
    return "BF16" in cpu_capabilities()


def convert_onnx(source: Path) -> ov.Model:
    """An ov.Model from an ONNX file."""
    ov = _ov()
    try:
        return ov.convert_model(str(source))
    except Exception as e:
        raise ExportError(f"OpenVINO could not convert {source.name}: {first_line(e)}") from e


@dataclass(frozen=True)
class Int8Recipe:
    """One way to run NNCF's post-training quantization; `optimize` tries a model's recipes in order and keeps the
    first variant that passes the accuracy gate."""

    name: str
    transformer: bool  # ModelType.TRANSFORMER: LayerNorm, Softmax and residual Adds stay in floating point
    smooth_quant: bool = True  # NNCF's SmoothQuant for transformer MatMuls (its default for ModelType.TRANSFORMER)


def int8_recipes(*, transformer: bool) -> tuple[Int8Recipe, ...]:
    """NNCF's recommended scheme first. For transformers, then the same without SmoothQuant: SmoothQuant moves
    activation outliers into the weights, which helps trained ViTs with outlier channels; where there are none (here:
    random-weight DeiT-S, worst-image cosine 0.973 with it, 0.997 without) it only widens the weight ranges."""
    if not transformer:
        return (Int8Recipe("default", transformer=False),)
    return (Int8Recipe("transformer", transformer=True), Int8Recipe("transformer-no-smoothquant", True, False))


def quantize_int8(
    model: ov.Model,
    calibration: np.ndarray,
    recipe: Int8Recipe,
    *,
    input_name: str,
    masks: np.ndarray | None = None,
    mask_name: str | None = None,
    batch_size: int = 1,
) -> ov.Model:
    """NNCF post-training quantization (min-max ranges over the calibration images, fast bias correction) by
    `recipe`: for transformers the MIXED preset (symmetric weights, asymmetric activations); PERFORMANCE for
    convnets. A detector's calibration items are dicts of both inputs, its `masks` fed as `mask_name`."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    except ImportError:
        raise ExportError("OpenVINO INT8 needs NNCF: pip install 'vitexport[cpu-opt]'") from None
    nncf.set_log_level(logging.ERROR)
    if calibration is None or len(calibration) == 0:
        raise ExportError("INT8 post-training quantization needs calibration images: give --calibration DIR")
    items = [
        {input_name: np.ascontiguousarray(calibration[i : i + batch_size], dtype=np.float32)}
        | ({} if masks is None or mask_name is None else {mask_name: np.asarray(masks[i : i + batch_size], np.int64)})
        for i in range(0, len(calibration), batch_size)
    ]
    dataset = nncf.Dataset(items)  # each item is the model's inputs by name
    from nncf.quantization.advanced_parameters import OverflowFix

    from vitexport.export.cpu import int8_saturates

    options = {}
    if recipe.transformer and not recipe.smooth_quant:
        # An alpha of -1 disables SmoothQuant (NNCF's AdvancedSmoothQuantParameters).
        options["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=-1)
    if int8_saturates():  # 7-bit weights on every layer where 8-bit products would saturate (export/cpu.py)
        options["overflow_fix"] = OverflowFix.ENABLE
    advanced = AdvancedQuantizationParameters(**options) if options else None
    try:
        # NNCF draws progress bars on the terminal; a stage prints nothing, so they go nowhere.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(
                model,
                dataset,
                subset_size=len(calibration),
                model_type=nncf.ModelType.TRANSFORMER if recipe.transformer else None,
                preset=nncf.QuantizationPreset.MIXED if recipe.transformer else nncf.QuantizationPreset.PERFORMANCE,
                advanced_parameters=advanced,
            )
    except Exception as e:
        raise ExportError(f"NNCF quantization failed: {first_line(e)}") from e


def save_ir(model: ov.Model, output: Path) -> None:
    """Write `output` (.xml) and its .bin; weights stay FP32 (compress_to_fp16 would round them for every hint)."""
    ov = _ov()
    try:
        ov.save_model(model, str(output), compress_to_fp16=False)
    except Exception as e:
        raise ExportError(f"cannot write {output}: {first_line(e)}") from e


def compile_ir(path: Path, precision: str, threads: int | None = None) -> ov.CompiledModel:
    """A compiled CPU model in latency mode (best on few cores) with the precision hint of the artifact."""
    ov = _ov()
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict[str, Any] = {hints.performance_mode: hints.PerformanceMode.LATENCY}
    if OV_PRECISION.get(precision, "f32"):
        config[hints.inference_precision] = OV_PRECISION.get(precision, "f32")
    if threads:
        config[props.inference_num_threads] = threads
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:
        raise ExportError(f"OpenVINO could not compile {path.name}: {first_line(e)}") from e
