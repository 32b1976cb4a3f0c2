"""ONNX -> TensorRT engine, for GPU hosts: one optimization profile on the batch axis, a timing cache, the engine
inspector's layer information, a fusion audit over it, a trtexec line that reproduces the build, and a validation
run against ONNX Runtime fp32.

TensorRT 10 and 11 build differently, and the version is detected, not assumed:
- TensorRT 11 networks are always strongly typed; the FP16/INT8 builder flags and precision constraints are gone,
  so precision lives in the ONNX graph (the FP16 ONNX with FP32 LayerNorm, or an explicit Q/DQ ONNX, from
  `export.optimize`).
- TensorRT 10 builds an FP32 ONNX with BuilderFlag.FP16 (and INT8 for a Q/DQ graph), with LayerNorm and Softmax
  layers constrained to FP32 (FP16 LayerNorm after attention overflows); an already-typed FP16 graph is built
  strongly typed, as on 11.

`tensorrt` is imported lazily, inside the functions that build: everything up to the CUDA call (profile, input graph
choice, trtexec line, fusion audit) is plain Python and is tested on machines without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.artifacts import ModelArtifact, load_artifact, sidecar_path, write_text_atomic
from vitexport.errors import ExportError, VitExportError

SUPPORTED_MAJORS = (10, 11)  # 12+ is treated as 11 (strongly typed), with the version recorded in the sidecar
MAX_BATCH = 4096  # the exported ONNX's batch axis is declared 1..4096 (export/onnx.py)
MAX_WORKSPACE_GIB = 1024.0
OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level: 0-5, TensorRT's default is 3
DEFAULT_OPT_LEVEL = 3
VALIDATION_MAX_BATCH = 8  # the ONNX Runtime fp32 reference runs on CPU: keep the validation batches small
INSTALL_HINT = (
    "on a host with an NVIDIA GPU and driver, run: "
    "pip install 'vitexport[gpu]' --extra-index-url https://pypi.nvidia.com"
)


class TensorRTUnavailable(VitExportError):
    """TensorRT, a GPU or the driver is missing; the message says which and how to get them."""


class EngineBuildError(ExportError):
    pass


class GraphPrecisionError(ExportError):
    """The requested engine precision needs a different ONNX graph (e.g. the FP16 graph for TensorRT 11)."""

    def __init__(self, message: str, needed: Precision):
        super().__init__(message)
        self.needed = needed


class Precision(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"
    int8 = "int8"


# ----------------------------------------------------------------------------------------------------------------
# Profile and settings


@dataclass(frozen=True)
class BatchProfile:
    """The one optimization profile on the dynamic batch axis; TensorRT tunes kernels for `opt`."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise EngineBuildError(f"batch profile needs 1 <= MIN <= OPT <= MAX, got {self}")
        if self.max > MAX_BATCH:
            raise EngineBuildError(f"batch profile MAX {self.max} exceeds the ONNX batch axis limit {MAX_BATCH}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """ "MIN:OPT:MAX", or one number N for a fixed batch N:N:N."""
        parts = text.strip().split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise EngineBuildError(f"--batch must be MIN:OPT:MAX integers, e.g. 1:8:32, not {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise EngineBuildError(f"--batch must be MIN:OPT:MAX, e.g. 1:8:32, not {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, img_size: int) -> dict[str, tuple[int, int, int, int]]:
        return {k: (b, 3, img_size, img_size) for k, b in (("min", self.min), ("opt", self.opt), ("max", self.max))}

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def validation_batches(self) -> tuple[int, ...]:
        return tuple(sorted({b for b in (self.min, self.opt, self.max) if b <= VALIDATION_MAX_BATCH} or {self.min}))


@dataclass(frozen=True)
class BuildSettings:
    precision: Precision = Precision.fp16
    profile: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 32))
    workspace_gib: float = 4.0
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: Path | None = None  # None: `timing.cache` beside the engine
    validate: bool = True
    fp32_softmax: bool = False  # TensorRT 10 weak typing: also pin Softmax to FP32 (may prevent MHA fusion)

    def __post_init__(self) -> None:
        if not 0 < self.workspace_gib <= MAX_WORKSPACE_GIB:
            raise EngineBuildError(f"--workspace must be in (0, {MAX_WORKSPACE_GIB:g}] GiB, got {self.workspace_gib}")
        if self.opt_level not in OPT_LEVELS:
            raise EngineBuildError(f"--opt-level must be 0-5 (TensorRT's default is 3), got {self.opt_level}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * 2**30)

    @property
    def workspace_mib(self) -> int:
        return int(self.workspace_gib * 1024)


# ----------------------------------------------------------------------------------------------------------------
# Which graph, which flags


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"cannot read the TensorRT version {version!r}") from None


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built: from which ONNX, strongly typed or with which builder flags."""

    onnx: Path
    precision: Precision
    tensorrt_version: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # names of tensorrt.BuilderFlag members
    fp32_layer_types: tuple[str, ...] = ()  # names of tensorrt.LayerType members pinned to FP32 (weak typing only)

    @property
    def major(self) -> int:
        return trt_major(self.tensorrt_version)


# Weakly typed TensorRT 10: LayerNorm in FP16 after attention overflows (ARCHITECTURE §3), so Normalization layers are
# pinned to FP32 and OBEY makes the build fail rather than silently ignore the constraint. Softmax is pinned only on
# request (BuildSettings.fp32_softmax): an FP32 Softmax island between the two attention MatMuls can keep TensorRT
# from fusing them into one MHA kernel, whose own softmax already accumulates in FP32. The fusion audit shows which.
_OPTIMIZE_HINT = {
    Precision.fp16: "make it with `vitexport optimize {onnx} --precision fp16` and pass that .onnx",
    # Static Q/DQ (TensorRT's explicit quantization), on a graph without ONNX Runtime's contrib ops.
    Precision.int8: "make it with `vitexport optimize {onnx} --precision int8 --quant-method static "
    "--fuse-attention none --calibration DIR` and pass that .onnx",
}
ATTENTION_OP_MIN_VERSION = (10, 14)  # the first TensorRT whose ONNX parser reads the standard ONNX `Attention` op


@dataclass(frozen=True)
class BuildMode:
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    fp32_layer_types: tuple[str, ...] = ()


def choose_build(graph: str, precision: Precision, tensorrt_version: str, *, fp32_softmax: bool = False) -> BuildMode:
    """How a `graph`-precision ONNX becomes a `precision` engine on this TensorRT, or which graph is needed.

    | engine | graph | TensorRT 10                                  | TensorRT 11                 |
    |--------|-------|----------------------------------------------|-----------------------------|
    | fp32   | fp32  | weakly typed, no flags                       | strongly typed              |
    | fp16   | fp32  | FP16 flag, LayerNorm obeys FP32              | needs the FP16 graph        |
    | fp16   | fp16  | strongly typed                               | strongly typed              |
    | int8   | int8  | INT8+FP16 flags, LayerNorm obeys FP32        | strongly typed              |
    | int8   | other | needs the Q/DQ graph                         | needs the Q/DQ graph        |
    """
    major = trt_major(tensorrt_version)
    if major < SUPPORTED_MAJORS[0]:
        raise TensorRTUnavailable(f"TensorRT {tensorrt_version} is too old: vitexport builds with TensorRT 10 or 11")
    strong_only = major >= 11
    pinned = ("NORMALIZATION", "SOFTMAX") if fp32_softmax else ("NORMALIZATION",)
    if precision is Precision.fp32:
        if graph != "fp32":
            raise GraphPrecisionError(f"an fp32 engine builds from the fp32 ONNX, not an {graph} one", precision)
        return BuildMode(strongly_typed=strong_only)
    if precision is Precision.fp16:
        if graph == "fp16":
            return BuildMode(strongly_typed=True)
        if graph != "fp32":
            raise GraphPrecisionError(f"an fp16 engine cannot be built from an {graph} graph", precision)
        if strong_only:
            raise GraphPrecisionError(
                f"TensorRT {tensorrt_version} is strongly typed, so an fp16 engine needs the FP16 ONNX "
                "(FP32 LayerNorm), not the fp32 one",
                precision,
            )
        return BuildMode(False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), pinned)
    # int8: explicit quantization only. TensorRT 11 removed the calibrator and 10 deprecated it; a Q/DQ graph
    # checked on ONNX Runtime is the one accuracy gate for both.
    if graph != "int8":
        raise GraphPrecisionError(f"an int8 engine needs an explicit Q/DQ ONNX, not an {graph} one", precision)
    if strong_only:
        return BuildMode(strongly_typed=True)
    # INT8 for the Q/DQ-wrapped layers, FP16 for the rest (weak typing would otherwise leave them in FP32).
    return BuildMode(False, ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"), pinned)


def plan_build(
    artifact: ModelArtifact, precision: Precision, tensorrt_version: str, *, fp32_softmax: bool = False
) -> BuildPlan:
    """The build of a `precision` engine from this ONNX artifact on this TensorRT version."""
    if artifact.format != "onnx":
        raise EngineBuildError(f"{artifact.path} is a {artifact.format} artifact; TensorRT builds from ONNX")
    try:
        mode = choose_build(artifact.precision, precision, tensorrt_version, fp32_softmax=fp32_softmax)
        _check_parsable(artifact, precision, tensorrt_version)
    except GraphPrecisionError as e:
        hint = _OPTIMIZE_HINT.get(e.needed, "").format(onnx=fp32_onnx_name(artifact))
        raise GraphPrecisionError(f"{artifact.path.name}: {e}" + (f"; {hint}" if hint else ""), e.needed) from None
    return BuildPlan(artifact.path, precision, tensorrt_version, **asdict(mode))


def _check_parsable(artifact: ModelArtifact, precision: Precision, tensorrt_version: str) -> None:
    """Refuse graphs TensorRT's ONNX parser cannot read, as the optimize stage's sidecar describes them."""
    details, name = artifact.details, artifact.path.name
    if details.get("fuse_attention") == "ort":
        raise EngineBuildError(
            f"{name} holds ONNX Runtime's contrib ops (com.microsoft, from --fuse-attention ort), which TensorRT's "
            f"ONNX parser does not read; build from {fp32_onnx_name(artifact)} or a --fuse-attention none/onnx variant"
        )
    method = details.get("quantization", {}).get("method")
    if precision is Precision.int8 and method not in (None, "static"):
        # ORT's dynamic quantization writes MatMulInteger/DynamicQuantizeLinear, not the Q/DQ pairs TensorRT needs.
        raise GraphPrecisionError(f"this int8 graph is {method}ally quantized, not explicit Q/DQ", Precision.int8)
    version = tuple(int(v) for v in re.findall(r"\d+", tensorrt_version)[:2])
    if details.get("fuse_attention") == "onnx" and version < ATTENTION_OP_MIN_VERSION:
        raise EngineBuildError(
            f"{name} uses the ONNX Attention op, which the parser of TensorRT {tensorrt_version} does not read "
            f"(10.14 and later do); make the graph with `vitexport optimize {fp32_onnx_name(artifact)} "
            f"--precision {artifact.precision} --fuse-attention none`"
        )


def fp32_onnx_name(artifact: ModelArtifact) -> str:
    """The file name to give `vitexport optimize`: the fp32 ONNX this artifact is, or was derived from."""
    if artifact.precision == "fp32":
        return artifact.path.name
    try:
        return fp32_reference(artifact).path.name
    except VitExportError:
        return f"{artifact.model}.onnx"


def derive_graph(
    artifact: ModelArtifact, precision: Precision, *, progress: Callable[[str], None] = lambda _: None
) -> ModelArtifact:
    """The FP16 graph of an fp32 ONNX artifact through the optimize stage (export.optimize), reusing a gated one.

    Only fp16 is derived automatically: an int8 Q/DQ graph needs calibration images, which only the user has.
    """
    from export import optimize as opt

    if precision is not Precision.fp16 or artifact.precision != "fp32":
        raise GraphPrecisionError(
            f"vitexport derives only fp16 graphs from fp32 ones, not {precision.value}", precision
        )
    target = opt.Precision.fp16
    fusion = opt.default_fusion(opt.Runtime.onnxruntime, target)
    output = opt.default_output(artifact.path, opt.Runtime.onnxruntime, target, fusion)
    if sidecar_path(output).is_file():
        existing = load_artifact(output)
        if existing.precision == "fp16" and existing.validation:  # a sidecar is only written after the gate
            return existing
    progress("making the FP16 graph (optimize stage)")
    return opt.optimize(artifact, precision=target, output=output, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# trtexec


def trtexec_command(
    plan: BuildPlan,
    settings: BuildSettings,
    *,
    engine: Path,
    input_name: str,
    img_size: int,
    timing_cache: Path,
    layer_info: Path,
    fp32_layers: Iterable[str] = (),
) -> list[str]:
    """The trtexec arguments that reproduce this build; paths are relative to the engine's folder.

    `fp32_layers` are the network layers pinned to FP32 (weakly typed builds): trtexec takes them by name.
    """
    base = engine.parent

    def rel(p: Path) -> str:
        return os.path.relpath(p, base)

    def shape(s: tuple[int, ...]) -> str:
        return f"{input_name}:" + "x".join(map(str, s))

    shapes = settings.profile.shapes(img_size)
    args = [
        "trtexec",
        f"--onnx={rel(plan.onnx)}",
        f"--saveEngine={rel(engine)}",
        f"--minShapes={shape(shapes['min'])}",
        f"--optShapes={shape(shapes['opt'])}",
        f"--maxShapes={shape(shapes['max'])}",
        f"--memPoolSize=workspace:{settings.workspace_mib}",  # MiB when no suffix is given
        f"--builderOptimizationLevel={settings.opt_level}",
        f"--timingCacheFile={rel(timing_cache)}",
        "--profilingVerbosity=detailed",
        f"--exportLayerInfo={rel(layer_info)}",
        "--skipInference",
    ]
    if plan.strongly_typed and plan.major < 11:
        args.append("--stronglyTyped")  # always on, and the flag a no-op, in 11
    flag_args = {"FP16": "--fp16", "INT8": "--int8", "OBEY_PRECISION_CONSTRAINTS": "--precisionConstraints=obey"}
    args += [flag_args[f] for f in plan.builder_flags]
    layers = list(fp32_layers)
    if layers:
        args.append("--layerPrecisions=" + ",".join(f"{n}:fp32" for n in layers))
        args.append("--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in layers))
    return args


def trtexec_script(args: list[str], *, tensorrt_version: str) -> str:
    lines = " \\\n  ".join(shlex.quote(a) for a in args)
    return (
        "#!/bin/sh\n"
        f"# Rebuilds this engine with trtexec from TensorRT {tensorrt_version} (written by vitexport).\n"
        'cd "$(dirname "$0")" || exit 1\n'
        f"exec {lines}\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# Fusion audit over the engine inspector's layer information (LayerInformationFormat.JSON)

# Fused attention kernels show up by name: Myelin's `_gemm_mha_v2_*` and `*fmha*` kernels, flash attention, and
# TensorRT's IAttention layers (ONNX `Attention`, TensorRT >= 10.14).
_FUSED_ATTENTION = re.compile(r"mha|flash_?att|fused_?att", re.IGNORECASE)
_SOFTMAX = re.compile(r"softmax", re.IGNORECASE)
_LAYERNORM = re.compile(r"layer_?norm|LayerNormalization", re.IGNORECASE)


def _text(layer: dict[str, Any], *keys: str) -> str:
    return " ".join(str(layer.get(k, "")) for k in keys)


def tensor_precision(tensor: dict[str, Any]) -> str | None:
    """fp32 / fp16 / bf16 / int8 of one layer input or output, None when the inspector did not say.

    TensorRT 10 writes one "Format/Datatype" string ("Row major linear FP32 format", "Half", ...); TensorRT 11
    splits it into "Format" and "DataType" ("Float", "Half", ...). Engines with dynamic shapes report
    "N/A due to dynamic shapes" unless an execution context with set shapes is given to the inspector.
    """
    text = " ".join(str(tensor.get(k, "")) for k in ("DataType", "Format/Datatype", "Format")).lower()
    for token, name in (("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("int8", "int8")):
        if token in text:
            return name
    if "fp32" in text or "float" in text:
        return "fp32"
    return None


@dataclass(frozen=True)
class FusionAudit:
    layers: int
    detailed: bool  # False when the engine was not built with ProfilingVerbosity.DETAILED: nothing to audit
    expected_attention: int  # attention blocks in the model (0 for ResNets)
    fused_attention: int  # layers running a fused MHA kernel
    unfused_softmax: int  # Softmax layers outside any fused attention kernel
    layernorm_layers: int
    layernorm_not_fp32: tuple[str, ...]  # LayerNorm layers with a non-FP32 input or output
    layernorm_unknown: int  # LayerNorm layers whose tensor types the inspector did not report
    warnings: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def audit_layer_info(info: str | dict[str, Any], *, expected_attention: int, precision: Precision | str) -> FusionAudit:
    """Check that attention ran as fused MHA kernels and LayerNorm in FP32; every shortfall becomes a warning.

    Fused attention is only required of fp16/int8 engines: TensorRT's fused MHA kernels are reduced-precision ones,
    so an fp32 engine is audited for LayerNorm only.
    """
    data = json.loads(info) if isinstance(info, str) else info
    raw = data.get("Layers", [])
    layers = [layer for layer in raw if isinstance(layer, dict)]
    precision = Precision(precision)
    if not layers:
        warning = (
            "the engine's layer information has no per-layer detail (built without ProfilingVerbosity.DETAILED): "
            "fusion and LayerNorm precision cannot be audited"
        )
        return FusionAudit(len(raw), False, expected_attention, 0, 0, 0, (), 0, (warning,))

    fused = [
        la
        for la in layers
        # IAttention (from the ONNX Attention op) runs as one fused kernel unless marked decomposable.
        if _FUSED_ATTENTION.search(_text(la, "Name", "LayerType", "TacticName"))
        or str(la.get("LayerType", "")).lower() == "attention"
    ]
    fused_ids = {id(la) for la in fused}
    softmax = [
        la
        for la in layers
        if id(la) not in fused_ids and _SOFTMAX.search(_text(la, "Name", "LayerType", "ParameterType", "Metadata"))
    ]
    norms = [
        la
        for la in layers
        if id(la) not in fused_ids
        and (la.get("LayerType") == "Normalization" or _LAYERNORM.search(_text(la, "Name", "Metadata")))
    ]
    not_fp32, unknown = [], 0
    for la in norms:
        types = {tensor_precision(t) for t in [*la.get("Inputs", []), *la.get("Outputs", [])]}
        if types - {None, "fp32"}:
            not_fp32.append(str(la.get("Name", "?")))
        elif types <= {None}:
            unknown += 1

    warnings = []
    if precision is not Precision.fp32 and expected_attention:
        if len(fused) < expected_attention:
            warnings.append(
                f"attention is not fused: {len(fused)} fused MHA kernels for {expected_attention} attention blocks"
            )
        if softmax:
            warnings.append(
                f"{len(softmax)} Softmax layers run outside fused attention (e.g. {softmax[0].get('Name')})"
            )
    if not_fp32:
        warnings.append(f"{len(not_fp32)} LayerNorm layers are not FP32 (e.g. {not_fp32[0]})")
    if unknown:
        warnings.append(f"the precision of {unknown} LayerNorm layers is not reported by the inspector")
    if expected_attention and not norms:
        warnings.append("no LayerNorm layers found in the layer information: their precision cannot be checked")
    return FusionAudit(
        layers=len(layers),
        detailed=True,
        expected_attention=expected_attention,
        fused_attention=len(fused),
        unfused_softmax=len(softmax),
        layernorm_layers=len(norms),
        layernorm_not_fp32=tuple(not_fp32),
        layernorm_unknown=unknown,
        warnings=tuple(warnings),
    )


def expected_attention_blocks(model: str) -> int:
    """Attention blocks of a registered model: its transformer depth, 0 for convolutional families."""
    from vitexport.registry import get_spec

    try:
        spec = get_spec(model)
    except VitExportError:
        return 0  # a model this version does not know: audit LayerNorm only
    return 0 if spec.family == "resnet" else int(getattr(spec.arch, "depth", 0))


# ----------------------------------------------------------------------------------------------------------------
# The environment


@dataclass(frozen=True)
class TensorRTEnvironment:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    driver_version: str

    @property
    def major(self) -> int:
        return trt_major(self.tensorrt_version)


def tensorrt_environment(gpu: int = 0) -> TensorRTEnvironment:
    """TensorRT's version and the GPU's name and compute capability; one-line TensorRTUnavailable otherwise."""
    from export.cuda import CudaUnavailable, probe_gpu

    missing = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
    except ImportError:
        missing.append("TensorRT is not installed (no `tensorrt` module)")
    except OSError as e:  # the wheel is there but its libraries are not (e.g. tensorrt_libs missing)
        missing.append(f"TensorRT's libraries do not load ({str(e).splitlines()[0]})")
    try:
        info = probe_gpu(gpu)
    except CudaUnavailable as e:
        missing.append(str(e))
        info = None
    if missing or version is None or info is None:
        raise TensorRTUnavailable(f"cannot build TensorRT engines here: {' and '.join(missing)}; {INSTALL_HINT}")
    if trt_major(version) < SUPPORTED_MAJORS[0]:
        raise TensorRTUnavailable(f"TensorRT {version} is too old: vitexport builds with TensorRT 10 or 11")
    return TensorRTEnvironment(version, info.name, info.compute_capability, info.driver_version)


# ----------------------------------------------------------------------------------------------------------------
# Artifacts


@dataclass(frozen=True)
class EngineDetails:
    """The `details` of a "tensorrt" ModelArtifact. The Triton writer reads `profile` for max_batch_size and
    preferred batch sizes, and `compute_capability` for cc_model_filenames."""

    profile: BatchProfile
    precision: Precision
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    builder_optimization_level: int
    workspace_gib: float
    onnx: str  # the ONNX sidecar the engine was built from, relative to the engine
    layer_info: str  # file names beside the engine
    trtexec: str
    timing_cache: str
    fp32_layers: tuple[str, ...] = ()
    fusion_audit: dict[str, Any] | None = None
    build_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        d["precision"] = self.precision.value
        d["builder_flags"] = list(self.builder_flags)
        d["fp32_layers"] = list(self.fp32_layers)
        return d

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> EngineDetails:
        if artifact.format != "tensorrt":
            raise EngineBuildError(f"{artifact.path} is a {artifact.format} artifact, not a TensorRT engine")
        d = dict(artifact.details)
        d["profile"] = BatchProfile(**d["profile"])
        d["precision"] = Precision(d["precision"])
        d["builder_flags"] = tuple(d["builder_flags"])
        d["fp32_layers"] = tuple(d.get("fp32_layers", ()))
        return cls(**d)


@dataclass(frozen=True)
class EnginePaths:
    """Everything written beside the engine."""

    engine: Path

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.engine)

    @property
    def layer_info(self) -> Path:
        return self.engine.with_name(self.engine.name + ".layers.json")

    @property
    def trtexec(self) -> Path:
        return self.engine.with_name(self.engine.name + ".trtexec.sh")


def engine_artifact(source: ModelArtifact, paths: EnginePaths, details: EngineDetails) -> ModelArtifact:
    """The sidecar-described artifact of an engine built from `source` (its preprocessing and I/O carry over)."""
    return ModelArtifact(
        path=paths.engine,
        format="tensorrt",
        model=source.model,
        preprocess=source.preprocess,
        num_classes=source.num_classes,
        input_name=source.input_name,
        output_names=source.output_names,
        batch_size=None if details.profile.min != details.profile.max else details.profile.max,
        precision=details.precision.value,
        opset=source.opset,
        checkpoint_sha256=source.checkpoint_sha256,
        source=os.path.relpath(source.sidecar, paths.engine.parent),
        details=details.to_dict(),
    )


def onnx_for_engine(
    model_or_onnx: str | Path,
    settings: BuildSettings,
    tensorrt_version: str,
    *,
    img_size: int | None = None,
    workdir: Path = Path("."),
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """The ONNX artifact to build from: an existing file or sidecar, or a registered model exported here first.

    When the engine needs the FP16 graph (fp16 on strongly typed TensorRT 11) and the input is fp32, the graph is
    derived through the optimize stage. Anything else that cannot be built fails before a long export starts.
    """
    from vitexport.registry import get_spec

    path = Path(model_or_onnx)
    if path.suffix in (".onnx", ".json") or path.exists():
        artifact = load_artifact(path)
        if img_size is not None and img_size != artifact.preprocess.input_size:
            raise EngineBuildError(
                f"{path.name} takes {artifact.preprocess.input_size}px images; --img-size applies to model names"
            )
    else:
        spec = get_spec(str(model_or_onnx))  # unknown names fail here, with suggestions
        _derivable(settings, tensorrt_version)  # int8 from a model name: say so now, not after the export
        from export.onnx import export_onnx

        artifact = export_onnx(spec.name, workdir / f"{spec.name}.onnx", img_size=img_size, progress=progress)
    try:
        plan_build(artifact, settings.precision, tensorrt_version, fp32_softmax=settings.fp32_softmax)
    except GraphPrecisionError as e:
        if not (e.needed is Precision.fp16 and artifact.precision == "fp32"):
            raise
        artifact = derive_graph(artifact, Precision.fp16, progress=progress)
    return artifact


def _derivable(settings: BuildSettings, tensorrt_version: str) -> None:
    try:
        choose_build("fp32", settings.precision, tensorrt_version, fp32_softmax=settings.fp32_softmax)
    except GraphPrecisionError as e:
        if e.needed is not Precision.fp16:
            hint = _OPTIMIZE_HINT.get(e.needed, "").format(onnx="MODEL.onnx")
            raise GraphPrecisionError(f"{e}" + (f"; export first, then {hint}" if hint else ""), e.needed) from None


def default_engine_path(artifact: ModelArtifact, precision: Precision) -> Path:
    return artifact.path.with_name(f"{artifact.model}_{precision.value}.plan")


def check_profile_fits(artifact: ModelArtifact, profile: BatchProfile) -> None:
    if artifact.batch_size is not None and not (profile.min == profile.max == artifact.batch_size):
        raise EngineBuildError(
            f"{artifact.path.name} has a fixed batch size {artifact.batch_size}; "
            f"use --batch {artifact.batch_size} or export with a dynamic batch"
        )


def fp32_reference(artifact: ModelArtifact) -> ModelArtifact:
    """The fp32 ONNX the validation compares against: the artifact itself, or the fp32 graph it was derived from."""
    seen = artifact
    for _ in range(4):  # optimize stages chain through `source`; a short walk finds the exported fp32 graph
        if seen.precision == "fp32" and seen.format == "onnx":
            return seen
        if not seen.source:
            break
        try:
            seen = load_artifact(seen.sidecar.parent / seen.source)
        except VitExportError:
            break
    raise EngineBuildError(
        f"no fp32 ONNX to validate against: {artifact.sidecar.name} does not lead to one through its `source`"
    )


def validation_tolerance(precision: Precision):
    """The accuracy gate's budget for this engine precision (export/validate.py TOLERANCES).

    fp32 engines use the fp16 budget too: TensorRT runs FP32 matmuls in TF32 by default. Until the optimize stage
    adds its "fp16"/"int8" budgets, a documented fallback is used.
    """
    from export.validate import TOLERANCES, Tolerance

    fallback = {
        # ~2e-3 max abs drift measured for FP16 DeiT on ONNX Runtime; TensorRT's kernels add their own rounding.
        "fp16": Tolerance(max_abs=2e-2, min_cosine=0.9995),
        "int8": Tolerance(max_abs=0.5, min_cosine=0.99, min_top1_agreement=0.75),
    }
    key = "int8" if precision is Precision.int8 else "fp16"
    return TOLERANCES.get(key, fallback[key])


# ----------------------------------------------------------------------------------------------------------------
# The build (needs TensorRT and a GPU)


def build_engine(
    artifact: ModelArtifact,
    output: str | Path,
    settings: BuildSettings,
    *,
    environment: TensorRTEnvironment | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """Build, inspect, audit and validate a TensorRT engine from an ONNX artifact; write it and its sidecar.

    The sidecar is written last: a failed validation raises ValidationError and leaves no sidecar, so later stages
    never pick up an unchecked engine. The fusion audit does not fail the build; its warnings are in
    details["fusion_audit"] for the caller to show.
    """
    env = environment or tensorrt_environment()
    plan = plan_build(artifact, settings.precision, env.tensorrt_version, fp32_softmax=settings.fp32_softmax)
    check_profile_fits(artifact, settings.profile)
    reference = fp32_reference(artifact) if settings.validate else None  # fail before a long build, not after
    paths = EnginePaths(Path(output))
    paths.engine.parent.mkdir(parents=True, exist_ok=True)
    # An earlier build's sidecar must not end up describing an engine that then fails validation.
    paths.sidecar.unlink(missing_ok=True)
    timing_cache = settings.timing_cache or paths.engine.with_name("timing.cache")

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineBuildError("TensorRT could not create a builder (is the GPU usable? see the log above)")
    # 0 on TensorRT 11 (always strongly typed; the flag is deprecated and ignored there), opt-in on 10.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed and plan.major < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {plan.onnx.name}")
    # parse_from_file, not parse(bytes): it resolves weights stored as external data beside the ONNX.
    if not parser.parse_from_file(str(plan.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {plan.onnx.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector's per-layer detail, for the audit
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    fp32_layers = _pin_fp32(trt, network, plan.fp32_layer_types)

    input_name = network.get_input(0).name
    if input_name != artifact.input_name:
        raise EngineBuildError(f"the ONNX input is {input_name!r}, the sidecar says {artifact.input_name!r}")
    profile = builder.create_optimization_profile()
    shapes = settings.profile.shapes(artifact.preprocess.input_size)
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version is refused; start a fresh one rather than fail the build.
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    progress(f"building the {plan.precision.value} engine with TensorRT {env.tensorrt_version} on {env.gpu_name}")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine; its log above says why")
    plan_bytes = bytes(serialized)
    _write_bytes_atomic(paths.engine, plan_bytes)
    _write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    from export.cuda import DeviceSession

    with DeviceSession() as device:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan_bytes)
        if engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine it just built")
        progress("inspecting the engine")
        info = _layer_information(trt, engine, input_name, shapes["opt"])
        write_text_atomic(paths.layer_info, info + "\n")
        audit = audit_layer_info(
            info, expected_attention=expected_attention_blocks(artifact.model), precision=plan.precision
        )
        args = trtexec_command(
            plan,
            settings,
            engine=paths.engine,
            input_name=input_name,
            img_size=artifact.preprocess.input_size,
            timing_cache=timing_cache,
            layer_info=paths.layer_info,
            fp32_layers=fp32_layers,
        )
        write_text_atomic(paths.trtexec, trtexec_script(args, tensorrt_version=env.tensorrt_version))
        paths.trtexec.chmod(0o755)
        details = EngineDetails(
            profile=settings.profile,
            precision=plan.precision,
            tensorrt_version=env.tensorrt_version,
            gpu_name=env.gpu_name,
            compute_capability=env.compute_capability,
            strongly_typed=plan.strongly_typed or plan.major >= 11,
            builder_flags=plan.builder_flags,
            builder_optimization_level=settings.opt_level,
            workspace_gib=settings.workspace_gib,
            onnx=os.path.relpath(artifact.sidecar, paths.engine.parent),
            layer_info=paths.layer_info.name,
            trtexec=paths.trtexec.name,
            timing_cache=os.path.relpath(timing_cache, paths.engine.parent),
            fp32_layers=tuple(fp32_layers),
            fusion_audit=audit.to_dict(),
            build_seconds=round(seconds, 1),
        )
        result = engine_artifact(artifact, paths, details)
        if settings.validate:
            progress("validating against ONNX Runtime fp32")
            reports = validate_engine(trt, engine, device, result, reference, settings)
            result = result.with_(validation={"passed": True, "reports": [r.to_dict() for r in reports]})
    result.save()
    return result


def _pin_fp32(trt: Any, network: Any, layer_types: tuple[str, ...]) -> list[str]:
    """Constrain LayerNorm/Softmax layers (and decomposed LayerNorm ops, by name) to FP32; return their names."""
    if not layer_types:
        return []
    types = {getattr(trt.LayerType, t) for t in layer_types}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in types or _LAYERNORM.search(layer.name):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


def _layer_information(trt: Any, engine: Any, input_name: str, opt_shape: tuple[int, ...]) -> str:
    """The inspector's JSON for the whole engine, with shapes set so that tensor formats are reported."""
    context = engine.create_execution_context()
    context.set_input_shape(input_name, opt_shape)
    inspector = engine.create_engine_inspector()
    # `execution_context` in TensorRT 10/11; `context` in older bindings.
    attribute = "execution_context" if hasattr(inspector, "execution_context") else "context"
    setattr(inspector, attribute, context)
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.dumps(json.loads(info), indent=1)  # normalised, so the file diffs well between builds


def run_engine(trt: Any, engine: Any, device: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference with the name-based tensor API (TensorRT 10/11): set shapes and addresses, enqueueV3."""
    context = engine.create_execution_context()
    addresses = {}
    for name, array in inputs.items():
        dtype = trt.nptype(engine.get_tensor_dtype(name))
        context.set_input_shape(name, array.shape)
        addresses[name] = device.upload(array.astype(dtype))
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            continue
        shape = tuple(context.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        addresses[name] = device.alloc(int(np.prod(shape)) * dtype.itemsize)
        outputs[name] = (shape, dtype)
    for name, ptr in addresses.items():
        context.set_tensor_address(name, ptr)
    if not context.execute_async_v3(device.stream):
        raise EngineBuildError("TensorRT failed to run the engine")
    device.synchronize()
    return {name: device.download(addresses[name], shape, dtype) for name, (shape, dtype) in outputs.items()}


def validate_engine(
    trt: Any,
    engine: Any,
    device: Any,
    artifact: ModelArtifact,
    reference: ModelArtifact,
    settings: BuildSettings,
    *,
    seed: int = 0,
):
    """Compare the engine with ONNX Runtime fp32 at the profile's small batch sizes; raise on any failed check."""
    from export.onnx import ort_session
    from export.validate import check, compare

    session = ort_session(reference.path)
    rng = np.random.default_rng(seed)
    size = artifact.preprocess.input_size
    reports = []
    for b in settings.profile.validation_batches():
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        expected = session.run(list(reference.output_names), {reference.input_name: x})
        got = run_engine(trt, engine, device, {artifact.input_name: x})
        for name, e in zip(reference.output_names, expected, strict=True):
            reports.append(compare(name, np.asarray(e, np.float32), got[name].astype(np.float32)))
    check(reports, validation_tolerance(settings.precision))
    return reports


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
