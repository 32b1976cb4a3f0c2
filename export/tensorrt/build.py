"""The build itself (needs TensorRT and a GPU): parse, build with one profile and a timing cache, inspect, audit,
write the trtexec script, validate against ONNX Runtime (VALIDATION_RULES), and write the engine's sidecar last."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitexport.artifacts import ModelArtifact, derived, publish, sidecar_path
from vitexport.errors import first_line
from vitexport.export.tensorrt.audit import _LAYERNORM, audit_layer_info, expected_attention_blocks
from vitexport.export.tensorrt.environment import TensorRTEnvironment, tensorrt_environment
from vitexport.export.tensorrt.plan import (
    check_profile_fits,
    default_engine_path,
    fp32_reference,
    onnx_for_engine,
    plan_build,
    trtexec_command,
    trtexec_layer_info,
    trtexec_script,
)
from vitexport.export.tensorrt.settings import BatchProfile, BuildSettings, EngineBuildError, Precision
from vitexport.export.validate import TOLERANCES, DriftReport, Tolerance, check_drift, compare
from vitexport.fileio import staging, write_atomic

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
    build_warnings: tuple[str, ...] = ()  # what went wrong without failing the build (e.g. an unusable timing cache)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = self.profile.to_dict()
        d["precision"] = self.precision.value
        d["builder_flags"] = list(self.builder_flags)
        d["fp32_layers"] = list(self.fp32_layers)
        d["build_warnings"] = list(self.build_warnings)
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
        d["build_warnings"] = tuple(d.get("build_warnings", ()))
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

    @property
    def trtexec_layer_info(self) -> Path:
        """Written only by a replay of the trtexec script, so that it never replaces `layer_info`."""
        return trtexec_layer_info(self.engine)


def engine_artifact(source: ModelArtifact, paths: EnginePaths, details: EngineDetails) -> ModelArtifact:
    """The sidecar-described artifact of an engine built from `source` (its preprocessing and I/O carry over)."""
    return derived(
        source,
        path=paths.engine,
        format="tensorrt",
        batch_size=None if details.profile.min != details.profile.max else details.profile.max,
        precision=details.precision.value,
        opset=source.opset,
        source=os.path.relpath(source.sidecar, paths.engine.parent),
        batch_profile=(details.profile.min, details.profile.opt, details.profile.max),
        compute_capability=details.compute_capability,
        details=details.to_dict(),
    )


@dataclass(frozen=True)
class ValidationRule:
    """What an engine of one precision is checked against on ONNX Runtime, on random inputs at the profile's small
    batch sizes, and with which budget.

    `reference` "fp32" gates the engine against the fp32 ONNX. "source" gates it against the very ONNX it was built
    from (the same graph run by another runtime), and drift from the fp32 ONNX is then reported, never gated.
    """

    reference: str  # "fp32" or "source"
    tolerance: Tolerance


# TensorRT against ONNX Runtime running the same Q/DQ graph: the same scales clip both alike, so random inputs are fair
# here, unlike against fp32, where calibrated INT8 clips Gaussian noise far from the images it was calibrated on (the
# accuracy gate's int8 budget does not gate random inputs either: export/validate.py, export/gate.py). What may differ
# is rounding at requantization and, on TensorRT 10, FP16 in the unquantized layers; a wrong scale or a broken Q/DQ
# fusion drops the cosine far below 0.99. Top-1 is not gated: on noise the two top logits can be closer than one
# quantization step, and a flipped sample says nothing.
QDQ_ENGINE_TOLERANCE = Tolerance(max_abs=float("inf"), min_cosine=0.99, min_top1_agreement=0.0)

VALIDATION_RULES: dict[Precision, ValidationRule] = {
    # TensorRT runs FP32 matmuls in TF32 by default: the fp16 budget, not the fp32 one.
    Precision.fp32: ValidationRule("fp32", TOLERANCES["fp16"]),
    Precision.fp16: ValidationRule("fp32", TOLERANCES["fp16"]),
    # The Q/DQ graph itself passed the accuracy gate against fp32 on images (vitexport optimize); the engine must
    # match that graph.
    Precision.int8: ValidationRule("source", QDQ_ENGINE_TOLERANCE),
}


def validation_tolerance(precision: Precision) -> Tolerance:
    """The budget an engine of this precision is gated with (VALIDATION_RULES)."""
    return VALIDATION_RULES[precision].tolerance


@dataclass(frozen=True)
class ValidationReferences:
    """The ONNX artifacts an engine is compared with: `gate` decides, `fp32` (when not the gate) is only reported."""

    gate: ModelArtifact
    fp32: ModelArtifact | None = None


def validation_references(artifact: ModelArtifact, precision: Precision) -> ValidationReferences:
    """The references VALIDATION_RULES names for an engine built from `artifact`; raises before a long build."""
    if VALIDATION_RULES[precision].reference == "fp32":
        return ValidationReferences(fp32_reference(artifact))
    try:
        fp32 = fp32_reference(artifact)
    except EngineBuildError:
        fp32 = None  # a Q/DQ ONNX without its fp32 source: nothing to report drift against, the gate still holds
    return ValidationReferences(
        artifact, fp32 if fp32 is not None and fp32.path.resolve() != artifact.path.resolve() else None
    )


# ----------------------------------------------------------------------------------------------------------------
# The build (needs TensorRT and a GPU)


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

    cache_warning = use_timing_cache(config, timing_cache)
    build_warnings = (cache_warning,) if cache_warning else ()

    progress(f"building the {plan.precision.value} engine with TensorRT {env.tensorrt_version} on {env.gpu_name}")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine; its log above says why")
    plan_bytes = bytes(serialized)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)  # --timing-cache may name a folder not made yet
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    from vitexport.export.cuda import DeviceSession

    with DeviceSession() as device:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan_bytes)
        if engine is None:
            raise EngineBuildError("TensorRT could not deserialize the engine it just built")
        progress("inspecting the engine")
        info = _layer_information(trt, engine, input_name, shapes["opt"])
        write_atomic(paths.layer_info, info + "\n")
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
            fp32_layers=fp32_layers,
        )
        write_atomic(paths.trtexec, trtexec_script(args, tensorrt_version=env.tensorrt_version))
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
            build_warnings=build_warnings,
            fusion_audit=audit.to_dict(),
            build_seconds=round(seconds, 1),
        )
        result = engine_artifact(artifact, paths, details)
        if references is not None:
            progress(f"validating against {references.gate.path.name} on ONNX Runtime")
            validation = validate_engine(trt, engine, device, result, references, settings)
            result = result.with_(validation=validation)
    with staging(paths.engine) as staged:  # validated from memory: the file is written only now
        try:
            staged.write_bytes(plan_bytes)
        except OSError as e:
            raise EngineBuildError(f"cannot write {paths.engine}: {e.strerror or e}") from None
        return publish(result.with_(path=staged), paths.engine)


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


def _layer_information(trt: Any, engine: Any, input_name: str, opt_shape: tuple[int, ...]) -> str:
    """The inspector's JSON for the whole engine, with shapes set so that tensor formats are reported."""
    context = _execution_context(engine)
    _set_input_shape(context, input_name, opt_shape)
    inspector = engine.create_engine_inspector()
    # `execution_context` in TensorRT 10/11; `context` in older bindings.
    attribute = "execution_context" if hasattr(inspector, "execution_context") else "context"
    setattr(inspector, attribute, context)
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.dumps(json.loads(info), indent=1)  # normalised, so the file diffs well between builds


def _execution_context(engine: Any) -> Any:
    context = engine.create_execution_context()
    if context is None:  # e.g. not enough device memory for the engine's activations
        raise EngineBuildError("TensorRT could not create an execution context; its log above says why")
    return context


def _set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    # False when the shape lies outside the engine's optimization profile (or the name is not an input).
    if not context.set_input_shape(name, tuple(shape)):
        dims = "x".join(map(str, shape))
        raise EngineBuildError(f"TensorRT refused input shape {dims} for {name!r}: outside the engine's profile?")


def run_engine(trt: Any, engine: Any, device: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference with the name-based tensor API (TensorRT 10/11): set shapes and addresses, enqueueV3."""
    return EngineRunner(trt, engine, device)(inputs)


class EngineRunner:
    """Inference on one engine, called many times (the benchmark's TensorRT runner): the execution context and the
    device buffers are kept between calls, and a buffer is re-allocated only when a larger batch needs more room, so
    a call costs the copies and the kernels, not a context and allocations."""

    def __init__(self, trt: Any, engine: Any, device: Any):
        self.trt, self.engine, self.device = trt, engine, device
        self.context = _execution_context(engine)
        self.buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, -1))
        if nbytes > capacity:
            if capacity >= 0:
                self.device.free(ptr)
            ptr = self.device.alloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, engine, context, device = self.trt, self.engine, self.context, self.device
        addresses = {}
        for name, array in inputs.items():
            array = np.ascontiguousarray(array.astype(trt.nptype(engine.get_tensor_dtype(name)), copy=False))
            _set_input_shape(context, name, array.shape)
            addresses[name] = self._buffer(name, array.nbytes)
            device.copy_in(addresses[name], array)
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                continue
            shape = tuple(context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            addresses[name] = self._buffer(name, int(np.prod(shape)) * dtype.itemsize)
            outputs[name] = (shape, dtype)
        for name, ptr in addresses.items():
            if not context.set_tensor_address(name, ptr):
                raise EngineBuildError(f"TensorRT refused the device buffer of tensor {name!r}; its log above says why")
        if not context.execute_async_v3(device.stream):
            raise EngineBuildError("TensorRT failed to run the engine")
        device.synchronize()
        return {name: device.download(addresses[name], shape, dtype) for name, (shape, dtype) in outputs.items()}


def validate_engine(
    trt: Any,
    engine: Any,
    device: Any,
    artifact: ModelArtifact,
    references: ValidationReferences,
    settings: BuildSettings,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the engine at the profile's small batch sizes and check it as VALIDATION_RULES says (compare_with_onnx)."""

    runner = EngineRunner(trt, engine, device)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return runner({artifact.input_name: x})

    return compare_with_onnx(run, artifact, references, settings, seed=seed)


def compare_with_onnx(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    artifact: ModelArtifact,
    references: ValidationReferences,
    settings: BuildSettings,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare an engine's outputs (`run`) with ONNX Runtime on random inputs; raise ValidationError on any failed
    check against the gating reference, and return the sidecar's `validation` (with fp32 drift when only reported)."""
    from vitexport.ort import ort_session

    rule = VALIDATION_RULES[settings.precision]
    gate_session = ort_session(references.gate.path)
    fp32 = references.fp32
    fp32_run = None if fp32 is None else (ort_session(fp32.path), list(fp32.output_names))
    rng = np.random.default_rng(seed)
    size = artifact.preprocess.input_size
    gated: list[DriftReport] = []
    reported: list[DriftReport] = []
    for b in settings.profile.validation_batches():
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        got = run(x)
        gated += _compare(artifact, got, gate_session.run(list(references.gate.output_names), {artifact.input_name: x}))
        if fp32_run is not None:
            fp32_session, fp32_outputs = fp32_run
            expected = fp32_session.run(fp32_outputs, {artifact.input_name: x})
            reported += _compare(artifact, got, expected)
    what = f"the {settings.precision.value} engine differs from {references.gate.path.name} on ONNX Runtime"
    check_drift(gated, rule.tolerance, what=what)
    validation: dict[str, Any] = {
        "passed": True,
        "reference": references.gate.path.name,
        "reports": [r.to_dict() for r in gated],
    }
    if references.fp32 is not None:
        validation["fp32_reference"] = references.fp32.path.name
        validation["fp32_drift"] = [r.to_dict() for r in reported]  # reported, not gated
    return validation


def _compare(artifact: ModelArtifact, got: dict[str, np.ndarray], expected: list[np.ndarray]) -> list[DriftReport]:
    names = artifact.output_names
    return [
        compare(n, np.asarray(e, np.float32), got[n].astype(np.float32)) for n, e in zip(names, expected, strict=True)
    ]
