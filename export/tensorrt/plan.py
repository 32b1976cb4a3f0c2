"""Which ONNX graph, and which builder flags, make an engine of a given precision on this TensorRT version; the ONNX
to build from; and the trtexec line that reproduces the build. Plain Python: no TensorRT import.

TensorRT 10 and 11 build differently, and the version is detected, not assumed:
- TensorRT 11 networks are always strongly typed; the FP16/INT8 builder flags and precision constraints are gone,
  so precision lives in the ONNX graph (the FP16 ONNX with FP32 LayerNorm, or an explicit Q/DQ ONNX, from
  `export.optimize`).
- TensorRT 10 builds an FP32 ONNX with BuilderFlag.FP16 (and INT8 for a Q/DQ graph), with LayerNorm layers
  constrained to FP32 (FP16 LayerNorm after attention overflows; Softmax too with `fp32_softmax`, off by default
  because a pinned Softmax is reported to stop MHA fusion); an already-typed FP16 graph is built strongly typed,
  as on 11.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from vitexport.artifacts import ModelArtifact, load_artifact, sidecar_path
from vitexport.errors import VitExportError
from vitexport.export.tensorrt.environment import SUPPORTED_MAJORS, TensorRTUnavailable, trt_major
from vitexport.export.tensorrt.settings import (
    BatchProfile,
    BuildSettings,
    EngineBuildError,
    GraphPrecisionError,
    Precision,
)


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


# Weakly typed TensorRT 10: LayerNorm in FP16 after attention overflows (docs/tensorrt.md), so Normalization layers are
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
    if precision is not Precision.int8:
        raise GraphPrecisionError(f"TensorRT builds fp32, fp16 or int8 engines, not {precision}", precision)
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
    name = artifact.path.name
    if artifact.fuse_attention == "ort":
        raise EngineBuildError(
            f"{name} holds ONNX Runtime's contrib ops (com.microsoft, from --fuse-attention ort), which TensorRT's "
            f"ONNX parser does not read; build from {fp32_onnx_name(artifact)} or a --fuse-attention none/onnx variant"
        )
    method = artifact.quant_method
    if precision is Precision.int8 and method not in (None, "static"):
        # ORT's dynamic quantization writes MatMulInteger/DynamicQuantizeLinear, not the Q/DQ pairs TensorRT needs.
        raise GraphPrecisionError(f"this int8 graph is {method}ally quantized, not explicit Q/DQ", Precision.int8)
    version = tuple(int(v) for v in re.findall(r"\d+", tensorrt_version)[:2])
    if artifact.fuse_attention == "onnx" and version < ATTENTION_OP_MIN_VERSION:
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
    from vitexport.export import optimize as opt

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
    fp32_layers: Iterable[str] = (),
) -> list[str]:
    """The trtexec arguments that reproduce this build; paths are relative to the engine's folder.

    `fp32_layers` are the network layers pinned to FP32 (weakly typed builds): trtexec takes them by name. trtexec
    exports its layer information to its own file (trtexec_layer_info), never to the one vitexport audited.
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
        # With --skipInference trtexec prints the layer information without an execution context, so on a dynamic
        # profile every tensor format reads "N/A due to dynamic shapes": a replay must not overwrite the file
        # vitexport wrote (with the opt shapes set) and audited.
        f"--exportLayerInfo={rel(trtexec_layer_info(engine))}",
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


def trtexec_layer_info(engine: Path) -> Path:
    """Where the trtexec replay writes its layer information: beside the engine, apart from vitexport's."""
    return engine.with_name(engine.name + ".trtexec.layers.json")


def trtexec_script(args: list[str], *, tensorrt_version: str) -> str:
    lines = " \\\n  ".join(shlex.quote(a) for a in args)
    return (
        "#!/bin/sh\n"
        f"# Rebuilds this engine with trtexec from TensorRT {tensorrt_version} (written by vitexport).\n"
        'cd "$(dirname "$0")" || exit 1\n'
        f"exec {lines}\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# The ONNX to build from


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
    from vitexport.models import get_spec

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
        from vitexport.export.onnx import export_onnx

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
