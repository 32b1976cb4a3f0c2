"""The build itself (needs TensorRT and a GPU): parse, build with one profile and a timing cache, inspect, audit,
write the trtexec script, validate against ONNX Runtime (VALIDATION_RULES), and write the engine's sidecar last."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitexport.artifacts import ModelArtifact, publish
from vitexport.errors import first_line
from vitexport.export.tensorrt.audit import _LAYERNORM, audit_layer_info, expected_attention_blocks
from vitexport.export.tensorrt.engine import EngineDetails, EnginePaths, engine_artifact
from vitexport.export.tensorrt.environment import TensorRTEnvironment, tensorrt_environment
from vitexport.export.tensorrt.plan import (
    BuildPlan,
    check_profile_fits,
    default_engine_path,
    onnx_for_engine,
    plan_build,
    trtexec_command,
    trtexec_script,
)
from vitexport.export.tensorrt.runner import layer_information
from vitexport.export.tensorrt.settings import BuildSettings, EngineBuildError
from vitexport.export.tensorrt.validation import validate_engine, validation_references
from vitexport.fileio import staging, write_atomic


def engine_for(
    model_or_onnx: str | Path,
    settings: BuildSettings,
    *,
    output: Path | None = None,
    img_size: int | None = None,
    reuse: Callable[[Path], ModelArtifact | None] = lambda _: None,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """The whole sequence behind `vitexport trt` and the benchmark's engines: TensorRT and a GPU present (else one
    line, before any export), the ONNX to build from (exported or derived as the version needs), the engine path
    (default MODEL_PRECISION.plan beside the ONNX), then the build. `reuse` may return an engine already there."""
    env = tensorrt_environment()
    source = onnx_for_engine(model_or_onnx, settings, env.tensorrt_version, img_size=img_size, progress=progress)
    output = output or default_engine_path(source, settings.precision)
    existing = reuse(output)
    if existing is not None:
        return existing
    return build_engine(source, output, settings, environment=env, progress=progress)


def build_engine(
    artifact: ModelArtifact,
    output: str | Path,
    settings: BuildSettings,
    *,
    environment: TensorRTEnvironment | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ModelArtifact:
    """Build, inspect, audit and validate a TensorRT engine from an ONNX artifact; write it and its sidecar.

    The engine is written (staged, then moved into place) only once validated, its sidecar last: a failed
    validation raises ValidationError, and it or an interruption leaves an earlier engine and its sidecar as they
    were, so later stages never pick up an unchecked engine. The fusion audit does not fail the build; its warnings
    are in details["fusion_audit"] for the caller to show.
    """
    env = environment or tensorrt_environment()
    plan = plan_build(artifact, settings.precision, env.tensorrt_version, fp32_softmax=settings.fp32_softmax)
    check_profile_fits(artifact, settings.profile)
    # Fail before a long build, not after.
    references = validation_references(artifact, settings.precision) if settings.validate else None
    paths = EnginePaths(Path(output))
    paths.engine.parent.mkdir(parents=True, exist_ok=True)
    timing_cache = settings.timing_cache or paths.engine.with_name("timing.cache")

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    built = _serialize(trt, logger, artifact, plan, settings, env, timing_cache, progress)

    from vitexport.export.cuda import DeviceSession

    with DeviceSession() as device:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(built.plan_bytes)
        if engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine it just built")
        progress("inspecting the engine")
        details = _describe(trt, engine, artifact, plan, settings, env, paths, timing_cache, built)
        result = engine_artifact(artifact, paths, details)
        if references is not None:
            progress(f"validating against {references.gate.path.name} on ONNX Runtime")
            validation = validate_engine(trt, engine, device, result, references, settings)
            result = result.with_(validation=validation)
    with staging(paths.engine) as staged:  # validated from memory: the file is written only now
        try:
            staged.write_bytes(built.plan_bytes)
        except OSError as e:
            raise EngineBuildError(f"cannot write {paths.engine}: {e.strerror or e}") from None
        return publish(result.with_(path=staged), paths.engine)


@dataclass(frozen=True)
class _Serialized:
    """A built engine's bytes, and what its inspection and sidecar need to know of the build."""

    plan_bytes: bytes
    input_name: str
    opt_shape: tuple[int, ...]
    fp32_layers: list[str]
    build_warnings: tuple[str, ...]
    seconds: float


def _serialize(
    trt: Any,
    logger: Any,
    artifact: ModelArtifact,
    plan: BuildPlan,
    settings: BuildSettings,
    env: TensorRTEnvironment,
    timing_cache: Path,
    progress: Callable[[str], None],
) -> _Serialized:
    """Parse the ONNX, configure the builder, build, and write the timing cache back. One function, because the
    parser must outlive the build: it owns the network's weights."""
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
    config, input_name, fp32_layers, opt_shape = _configure(trt, builder, network, artifact, plan, settings)
    cache_warning = use_timing_cache(config, timing_cache)

    progress(f"building the {plan.precision.value} engine with TensorRT {env.tensorrt_version} on {env.gpu_name}")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine; its log above says why")
    plan_bytes = bytes(serialized)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)  # --timing-cache may name a folder not made yet
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    warnings = (cache_warning,) if cache_warning else ()
    return _Serialized(plan_bytes, input_name, opt_shape, fp32_layers, warnings, seconds)


def _configure(
    trt: Any, builder: Any, network: Any, artifact: ModelArtifact, plan: BuildPlan, settings: BuildSettings
) -> tuple[Any, str, list[str], tuple[int, ...]]:
    """The builder config (workspace, optimization level, detailed profiling, the plan's flags), the FP32 pins and the
    batch profile on the input; returns the config, the input's name, the pinned layers and the profile's opt shape."""
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
    return config, input_name, fp32_layers, shapes["opt"]


def _describe(
    trt: Any,
    engine: Any,
    artifact: ModelArtifact,
    plan: BuildPlan,
    settings: BuildSettings,
    env: TensorRTEnvironment,
    paths: EnginePaths,
    timing_cache: Path,
    built: _Serialized,
) -> EngineDetails:
    """Write the layer information and the trtexec script beside the engine; its sidecar's details, audit included."""
    info = layer_information(trt, engine, built.input_name, built.opt_shape)
    write_atomic(paths.layer_info, info + "\n")
    audit = audit_layer_info(
        info, expected_attention=expected_attention_blocks(artifact.model), precision=plan.precision
    )
    args = trtexec_command(
        plan,
        settings,
        engine=paths.engine,
        input_name=built.input_name,
        img_size=artifact.preprocess.input_size,
        timing_cache=timing_cache,
        fp32_layers=built.fp32_layers,
    )
    write_atomic(paths.trtexec, trtexec_script(args, tensorrt_version=env.tensorrt_version))
    paths.trtexec.chmod(0o755)
    return EngineDetails(
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
        fp32_layers=tuple(built.fp32_layers),
        build_warnings=built.build_warnings,
        fusion_audit=audit.to_dict(),
        build_seconds=round(built.seconds, 1),
    )


def use_timing_cache(config: Any, path: Path) -> str | None:
    """Give the builder the timing cache at `path`, or an empty one; a warning for the sidecar when `path` was unusable.

    A cache written by another TensorRT version or GPU is refused: create_timing_cache may return None or raise, and
    set_timing_cache returns False. Starting empty costs build time, not correctness, so it does not fail the build.
    """
    blob = path.read_bytes() if path.is_file() else b""
    reason = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception as e:  # the bindings raise whatever the C++ side reports (RuntimeError, TypeError...)
            cache, reason = None, first_line(e)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return None
    try:
        empty = config.create_timing_cache(b"")
    except Exception:
        empty = None
    if empty is None or not config.set_timing_cache(empty, ignore_mismatch=False):
        raise EngineBuildError("TensorRT could not create an empty timing cache; its log above says why")
    if not blob:
        return None
    why = reason or "written by another TensorRT version or GPU?"
    return f"timing cache {path} was not usable ({why}); built with an empty one, which replaces it"


def _pin_fp32(trt: Any, network: Any, layer_types: tuple[str, ...]) -> list[str]:
    """Constrain LayerNorm/Softmax layers (and decomposed LayerNorm ops, by name) to FP32; return their names.

    Only floating-point outputs are pinned: the name pattern also matches the shape and index layers of a decomposed
    LayerNorm, and set_output_type(float32) on an Int32/Int64 output fails the build under OBEY_PRECISION_CONSTRAINTS.
    A matched layer without a floating-point output is left alone.
    """
    if not layer_types:
        return []
    types = {getattr(trt.LayerType, t) for t in layer_types}
    floats = (trt.float32, trt.float16)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in types or _LAYERNORM.search(layer.name):
            outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
            if not outputs:
                continue
            layer.precision = trt.float32
            for j in outputs:
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned
