"""ONNX -> TensorRT engine, for GPU hosts: one optimization profile on the batch axis, a timing cache, the engine
inspector's layer information, a fusion audit over it, a trtexec line that reproduces the build, and a validation
run against ONNX Runtime fp32.

TensorRT 10 and 11 build differently and the version is detected, not assumed: `plan.py` says how.

`tensorrt` is imported lazily, inside the functions that build: everything up to the CUDA call (profile, input graph
choice, trtexec line, fusion audit) is plain Python and is tested on machines without a GPU.

The stage is split by job: `settings` (precision, batch profile, limits, build errors), `environment` (TensorRT
version and GPU probe), `plan` (graph choice, builder flags, trtexec line), `audit` (fusion audit of the layer
information), `engine` (the engine's sidecar details and files), `runner` (inference and layer information on a
built engine), `validation` (the engine against ONNX Runtime) and `build` (the TensorRT build). Import from here.
"""

from __future__ import annotations

from vitexport.export.tensorrt.audit import FusionAudit, audit_layer_info, expected_attention_blocks, tensor_precision
from vitexport.export.tensorrt.build import build_engine, engine_for
from vitexport.export.tensorrt.engine import EngineDetails, EnginePaths, engine_artifact
from vitexport.export.tensorrt.environment import (
    INSTALL_HINT,
    SUPPORTED_MAJORS,
    TensorRTEnvironment,
    TensorRTUnavailable,
    tensorrt_environment,
    trt_major,
)
from vitexport.export.tensorrt.plan import (
    ATTENTION_OP_MIN_VERSION,
    BuildMode,
    BuildPlan,
    check_profile_fits,
    choose_build,
    default_engine_path,
    derive_graph,
    fp32_onnx_name,
    fp32_reference,
    onnx_for_engine,
    plan_build,
    trtexec_command,
    trtexec_layer_info,
    trtexec_script,
)
from vitexport.export.tensorrt.runner import EngineRunner, run_engine
from vitexport.export.tensorrt.settings import (
    DEFAULT_OPT_LEVEL,
    MAX_BATCH,
    MAX_WORKSPACE_GIB,
    OPT_LEVELS,
    VALIDATION_MAX_BATCH,
    BatchProfile,
    BuildSettings,
    EngineBuildError,
    GraphPrecisionError,
    Precision,
)
from vitexport.export.tensorrt.validation import (
    QDQ_ENGINE_TOLERANCE,
    VALIDATION_RULES,
    ValidationReferences,
    ValidationRule,
    compare_with_onnx,
    validate_engine,
    validation_references,
    validation_tolerance,
)

__all__ = [
    "ATTENTION_OP_MIN_VERSION",
    "DEFAULT_OPT_LEVEL",
    "INSTALL_HINT",
    "MAX_BATCH",
    "MAX_WORKSPACE_GIB",
    "OPT_LEVELS",
    "QDQ_ENGINE_TOLERANCE",
    "SUPPORTED_MAJORS",
    "VALIDATION_MAX_BATCH",
    "VALIDATION_RULES",
    "BatchProfile",
    "BuildMode",
    "BuildPlan",
    "BuildSettings",
    "EngineBuildError",
    "EngineDetails",
    "EnginePaths",
    "EngineRunner",
    "FusionAudit",
    "GraphPrecisionError",
    "Precision",
    "TensorRTEnvironment",
    "TensorRTUnavailable",
    "ValidationReferences",
    "ValidationRule",
    "audit_layer_info",
    "build_engine",
    "check_profile_fits",
    "choose_build",
    "compare_with_onnx",
    "default_engine_path",
    "derive_graph",
    "engine_artifact",
    "engine_for",
    "expected_attention_blocks",
    "fp32_onnx_name",
    "fp32_reference",
    "onnx_for_engine",
    "plan_build",
    "run_engine",
    "tensor_precision",
    "tensorrt_environment",
    "trt_major",
    "trtexec_command",
    "trtexec_layer_info",
    "trtexec_script",
    "validate_engine",
    "validation_references",
    "validation_tolerance",
]
