"""INT8 for ONNX Runtime with onnxruntime.quantization.

Measured on this project's CPUs: for ViT/DeiT, dynamic quantization of the MatMuls (weights s8 per channel,
activations quantized per batch at run time) doubles fp32 throughput, while static Q/DQ gains little because
ORT's CPU kernels dequantize around the attention ops. For ResNet the opposite: static Q/DQ (u8 activations, s8
per-channel weights, calibrated) is 2x fp32 and dynamic is 6x slower, because ORT has no dynamic integer Conv.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from vitexport.errors import ExportError, first_line

if TYPE_CHECKING:
    import numpy as np


class QuantMethod(str, Enum):
    dynamic = "dynamic"
    static = "static"


def is_convnet(family: str) -> bool:
    """ResNet, or an imported model with no attention op (`vitexport import`)."""
    return family in ("resnet", "convnet")


def default_method(family: str) -> QuantMethod:
    # DETR: static. Its ResNet backbone is most of its work, and dynamic quantization leaves every Conv in FP32
    # (detr_resnet50 on a 384 px canvas: static Q/DQ 656 ms, dynamic 1155 ms, fp32 1079 ms; docs/optimize.md).
    if family == "detr":
        return QuantMethod.static
    # MobileViT stays dynamic although mostly convolutional: on an AVX2-only EPYC (no VNNI) static Q/DQ of
    # mobilevit_xxs ran slower than fp32 (5.3 vs 6.1 img/s at batch 8), dynamic at 10.4 (docs/optimize.md).
    return QuantMethod.static if is_convnet(family) else QuantMethod.dynamic


CALIBRATION_PIXELS = 8 * 224 * 224  # per calibration run: 8 images of 224 px


def calibration_batch(size: int) -> int:
    """Images per calibration run at S x S: 8 at 224 px, fewer for larger inputs, one for DETR's 800 px canvas.
    ORT's calibrator runs a graph that keeps a min and max of every tensor, and its memory grows with the batch:
    measured on detr_resnet50 at 800 px, 4.6 GB at batch 1, 8.3 GB at batch 4, and batch 8 took a 24 GB machine
    down (the kernel killed vitexport). The ranges do not depend on the batching."""
    return max(1, min(8, CALIBRATION_PIXELS // (size * size)))


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    source: Path,
    output: Path,
    *,
    method: QuantMethod,
    input_name: str,
    calibration: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    mask_name: str | None = None,
    batch_size: int | None = None,
) -> None:
    """Write an INT8 ONNX model of `source` to `output`; static quantization calibrates on `calibration` (N,3,S,S)
    and, for a detector, its `masks` (N,S,S) fed as `mask_name`, `batch_size` images per run (default:
    `calibration_batch(S)`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vitexport.export.cpu import int8_saturates

    reduce_range = int8_saturates()  # 7-bit weights where 8-bit products would saturate (export/cpu.py)
    # ORT's quantizer logs a pre-processing hint on the root logger at every call; a stage prints nothing.
    with tempfile.TemporaryDirectory(prefix="vitexport-quant-") as tmp, _quiet_root_logger():
        try:
            if method is QuantMethod.dynamic:
                quantize_dynamic(
                    source,
                    output,
                    op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                    per_channel=True,
                    reduce_range=reduce_range,
                    weight_type=QuantType.QInt8,
                )
                return
            if calibration is None or len(calibration) == 0:
                raise ExportError("static INT8 quantization needs calibration images: give --calibration DIR")
            parts = max(1, len(calibration) // (batch_size or calibration_batch(calibration.shape[-1])))
            feeds = _calibration_feeds(calibration, parts, input_name, masks, mask_name)
            _quantize_static(source, output, feeds, Path(tmp), reduce_range=reduce_range)
        except ExportError:
            raise
        except Exception as e:  # onnxruntime.quantization raises bare exceptions of many types
            raise ExportError(f"INT8 quantization ({method.value}) failed: {first_line(e)}") from e


def _calibration_feeds(
    calibration: np.ndarray, parts: int, input_name: str, masks: np.ndarray | None, mask_name: str | None
) -> list[dict[str, np.ndarray]]:
    """The calibration images in `parts` runs, each with its masks when the model takes them."""
    import numpy as np

    feeds = [{input_name: np.ascontiguousarray(x, dtype=np.float32)} for x in np.array_split(calibration, parts)]
    if mask_name is not None and masks is not None:
        for feed, m in zip(feeds, np.array_split(masks, parts), strict=True):
            feed[mask_name] = np.ascontiguousarray(m, dtype=np.int64)
    return feeds


def _quantize_static(
    source: Path, output: Path, feeds: list[dict[str, np.ndarray]], tmp: Path, *, reduce_range: bool
) -> None:
    """Static Q/DQ: u8 activations calibrated on `feeds`, s8 per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    # quant_pre_process runs symbolic shape inference and ORT's basic optimisations (folding BatchNorm into Conv) so
    # that Q/DQ pairs land on the ops that execute.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(source), str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        prepared,
        output,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
