"""Artifacts passed between stages: a model file plus a JSON sidecar (`<file>.json`) describing it, so that every
command can run alone on the previous stage's output. Torch-free: the serving side reads these too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from vitexport import __version__
from vitexport.errors import ArtifactError
from vitexport.fileio import write_atomic
from vitexport.preprocess import PreprocessConfig


class Format(str, Enum):
    """What an artifact's model file is."""

    onnx = "onnx"
    openvino = "openvino"  # OpenVINO IR: an .xml with its .bin
    tensorrt = "tensorrt"  # a serialized TensorRT engine (.plan)

    def __str__(self) -> str:  # the value in messages and f-strings, as the plain strings these replace
        return self.value


class Precision(str, Enum):
    """The precision a model computes in, the one name every stage uses (export, optimize, gate, TensorRT, serving)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ModelArtifact:
    path: Path  # the model file (ONNX, OpenVINO IR .xml, TensorRT plan)
    format: Format
    model: str  # registry name
    preprocess: PreprocessConfig
    num_classes: int
    input_name: str = "pixel_values"
    output_names: tuple[str, ...] = ("logits",)
    batch_size: int | None = None  # None: dynamic batch axis
    precision: Precision = Precision.fp32
    opset: int | None = None
    checkpoint_sha256: str | None = None
    source: str | None = None  # sidecar of the artifact this one was derived from
    validation: dict[str, Any] | None = field(default=None, compare=False)
    # What later stages read of how this artifact was made (older sidecars kept these in `details`):
    fuse_attention: str | None = None  # "ort" (contrib ops), "onnx" (the Attention op) or "none"
    io_type: Precision = Precision.fp32  # fp16 graphs: the dtype of their input and outputs
    quant_method: str | None = None  # int8: "dynamic", "static" (Q/DQ) or "nncf-ptq"
    batch_profile: tuple[int, int, int] | None = None  # engines: the (min, opt, max) batch they were built for
    compute_capability: str | None = None  # engines: the GPU architecture they run on
    gate_failure: str | None = None  # a variant kept though it failed its gate (the benchmark's ungated rows): why
    # What the output is: "logits" (num_classes of them) or "features" (an embedding of num_classes values).
    head: str = "logits"
    # Models from outside the registry (`vitexport import`): "transformer" or "convnet", and their class names.
    family: str | None = None
    labels: tuple[str, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # the stage's record, for people to read
    vitexport_version: str = __version__

    def __post_init__(self) -> None:
        # Stages and old sidecars pass plain strings; a value outside the enums makes a malformed artifact.
        object.__setattr__(self, "format", Format(self.format))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "io_type", Precision(self.io_type))
        if self.batch_profile is not None:
            object.__setattr__(self, "batch_profile", tuple(int(b) for b in self.batch_profile))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.head not in ("logits", "features"):
            raise ValueError(f"head must be logits or features, not {self.head!r}")

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    @property
    def passed_gate(self) -> bool:
        """Whether the sidecar records a passed check against the fp32 reference. Every stage writes its sidecar only
        after its checks pass, but a sidecar from a run that skipped validation, an older vitexport or a hand edit
        must still say so before the artifact is served or ranked."""
        return bool(self.validation and self.validation.get("passed"))

    def with_(self, **changes: Any) -> ModelArtifact:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = self.path.name  # relative to the sidecar, so artifacts can be moved together
        d["preprocess"] = self.preprocess.to_dict()
        d["output_names"] = list(self.output_names)
        d["batch_profile"] = list(self.batch_profile) if self.batch_profile else None
        d["labels"] = list(self.labels) if self.labels else None
        return d

    def save(self) -> Path:
        """Write the sidecar atomically beside the model file."""
        write_atomic(self.sidecar, json.dumps(self.to_dict(), indent=2) + "\n")
        return self.sidecar


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def load_artifact(path: str | Path) -> ModelArtifact:
    """An artifact from its model file or its sidecar."""
    path = Path(path)
    sidecar = path if path.name.endswith(".json") else sidecar_path(path)
    if not sidecar.is_file():
        if not path.exists():
            raise ArtifactError(f"no such file: {path}")
        raise ArtifactError(f"no artifact sidecar {sidecar} (was {path} written by vitexport?)")
    try:
        d = _from_legacy_details(json.loads(sidecar.read_text()))
        known = {f.name for f in fields(ModelArtifact)}
        d = {k: v for k, v in d.items() if k in known}
        d["path"] = sidecar.parent / d["path"]
        d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        d["output_names"] = tuple(d["output_names"])
        artifact = ModelArtifact(**d)
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"sidecar {sidecar} is malformed: {e}") from None
    if not artifact.path.exists():
        raise ArtifactError(f"{sidecar} describes {artifact.path}, which does not exist")
    return artifact


def _from_legacy_details(d: dict[str, Any]) -> dict[str, Any]:
    """Sidecars written before the typed fields kept them in `details`: read them from there."""
    details = d.get("details") or {}
    profile = details.get("profile")
    legacy = {
        "fuse_attention": details.get("fuse_attention"),
        "io_type": details.get("io_type"),
        "quant_method": (details.get("quantization") or {}).get("method"),
        "batch_profile": [profile[k] for k in ("min", "opt", "max")] if isinstance(profile, dict) else None,
        "compute_capability": details.get("compute_capability"),
        "gate_failure": details.get("gate_failure"),
    }
    return {k: v for k, v in legacy.items() if v is not None} | {k: v for k, v in d.items() if v is not None}
