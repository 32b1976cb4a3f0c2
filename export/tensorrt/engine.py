"""What a built engine is: its sidecar's `details` (EngineDetails), the files written beside it (EnginePaths), and its
ModelArtifact."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitexport.artifacts import ModelArtifact, derived, sidecar_path
from vitexport.export.tensorrt.plan import trtexec_layer_info
from vitexport.export.tensorrt.settings import BatchProfile, EngineBuildError, Precision


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
