"""Every optimized variant vitexport makes, one row each: which runtime runs it in which precision, what file it is,
how Triton serves it, its row in the benchmark, and whether `deploy` considers it. The optimize stage builds a row,
deploy chooses among the deployable rows, the benchmark names its rows after them and the repository writer serves
them with their backend: all read this table, so a new variant is one row here (and its builder in export/).

Torch-free and ONNX-free, like the rest of the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vitexport.artifacts import Format, Precision
from vitexport.errors import VitExportError


class Runtime(str, Enum):
    """The runtime an optimized variant is made for."""

    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"  # engines: `vitexport trt` (GPU hosts), never built by optimize or deploy

    def __str__(self) -> str:
        return self.value


class ServingBackend(str, Enum):
    """How Triton runs a model."""

    python_onnxruntime = "python-onnxruntime"  # Python backend + ONNX Runtime CPU: serves on the local Triton
    python_openvino = "python-openvino"  # Python backend + OpenVINO CPU: serves locally where openvino is installed
    onnxruntime = "onnxruntime"  # Triton's ONNX Runtime backend: the official containers only
    openvino = "openvino"  # Triton's OpenVINO backend: the official containers only
    tensorrt = "tensorrt"  # tensorrt_plan: the official GPU containers only

    @property
    def formats(self) -> tuple[Format, ...]:
        """The artifact formats this backend can serve."""
        return {
            ServingBackend.python_onnxruntime: (Format.onnx,),
            ServingBackend.python_openvino: (Format.onnx, Format.openvino),
            ServingBackend.onnxruntime: (Format.onnx,),
            ServingBackend.openvino: (Format.openvino, Format.onnx),
            ServingBackend.tensorrt: (Format.tensorrt,),
        }[self]

    @classmethod
    def for_format(cls, fmt: Format | str) -> ServingBackend:
        """The default backend for an artifact format: the one that serves it on the local Triton where possible."""
        return {Format.onnx: cls.python_onnxruntime, Format.openvino: cls.python_openvino}.get(
            Format(fmt), cls.tensorrt
        )

    @property
    def runtime(self) -> str | None:
        """The library a Python-backend model imports (None: not a Python-backend model)."""
        return {ServingBackend.python_onnxruntime: "onnxruntime", ServingBackend.python_openvino: "openvino"}.get(self)


@dataclass(frozen=True)
class Variant:
    runtime: Runtime
    precision: Precision
    format: Format
    serving_backend: ServingBackend  # how the local Triton serves it
    bench_row: str | None  # its row in `vitexport bench` (None: not measured there)
    deployable: bool  # whether `deploy` builds, gates and times it
    made_by: str  # what builds it, for people (docs, `vitexport optimize --help`)

    @property
    def key(self) -> str:
        """`openvino-int8`: the name in `deploy --runtimes` and the candidates' table."""
        return f"{self.runtime.value}-{self.precision.value}"

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]

    def file_name(self, stem: str) -> str:
        """`deploy`'s name for this variant of the model `stem`."""
        return f"{stem}_{self.runtime.value}_{self.precision.value}{self.suffix}"


SUFFIXES = {Format.onnx: ".onnx", Format.openvino: ".xml", Format.tensorrt: ".plan"}

_ORT, _OV = ServingBackend.python_onnxruntime, ServingBackend.python_openvino
# The order is deploy's build order. FP16 on the CPU is left out of deploy: ONNX Runtime's CPU provider runs it
# through casts, slower than fp32 everywhere these machines were measured. ONNX Runtime has no BF16 CPU kernels.
VARIANTS: tuple[Variant, ...] = (
    Variant(
        Runtime.openvino, Precision.int8, Format.openvino, _OV, "openvino-int8", True, "NNCF post-training quantization"
    ),
    Variant(Runtime.openvino, Precision.bf16, Format.openvino, _OV, "openvino-bf16", True, "OpenVINO IR, bf16 hint"),
    Variant(
        Runtime.onnxruntime,
        Precision.int8,
        Format.onnx,
        _ORT,
        "onnxruntime-int8",
        True,
        "dynamic (ViT) or static Q/DQ INT8",
    ),
    Variant(Runtime.onnxruntime, Precision.fp32, Format.onnx, _ORT, "onnxruntime", True, "attention-fused ONNX"),
    Variant(Runtime.onnxruntime, Precision.fp16, Format.onnx, _ORT, None, False, "FP16 ONNX, LayerNorm/Softmax fp32"),
    Variant(Runtime.openvino, Precision.fp32, Format.openvino, _OV, None, False, "OpenVINO IR, f32 hint"),
    Variant(Runtime.openvino, Precision.fp16, Format.openvino, _OV, None, False, "OpenVINO IR, f16 hint"),
    Variant(
        Runtime.tensorrt,
        Precision.fp32,
        Format.tensorrt,
        ServingBackend.tensorrt,
        "tensorrt",
        False,
        "TensorRT engine (GPU)",
    ),
    Variant(
        Runtime.tensorrt, Precision.fp16, Format.tensorrt, ServingBackend.tensorrt, None, False, "TensorRT engine (GPU)"
    ),
    Variant(
        Runtime.tensorrt, Precision.int8, Format.tensorrt, ServingBackend.tensorrt, None, False, "TensorRT engine (GPU)"
    ),
)
DEPLOYABLE: tuple[Variant, ...] = tuple(v for v in VARIANTS if v.deployable)


def get_variant(runtime: Runtime | str, precision: Precision | str) -> Variant:
    """The row of (runtime, precision); one line naming what exists where there is none (ONNX Runtime bf16)."""
    for v in VARIANTS:
        if v.runtime.value == str(runtime) and v.precision.value == str(precision):
            return v
    made = ", ".join(v.precision.value for v in VARIANTS if v.runtime.value == str(runtime))
    raise VitExportError(f"no {runtime} {precision} variant: {runtime} makes {made or 'nothing'}")


def parse_variants(text: str, among: tuple[Variant, ...] = DEPLOYABLE) -> tuple[Variant, ...]:
    """`--runtimes openvino-int8,onnxruntime-fp32`: each named once, in the order given."""
    by_key = {v.key: v for v in among}
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in by_key]
    if bad or not names:
        valid = ", ".join(by_key)
        raise VitExportError(
            f"--runtimes takes RUNTIME-PRECISION items such as {valid}; not {', '.join(bad) or 'nothing'}"
        )
    return tuple(by_key[n] for n in dict.fromkeys(names))
