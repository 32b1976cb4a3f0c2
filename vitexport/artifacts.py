"""Artifacts passed between stages: a model file plus a JSON sidecar (`<file>.json`) describing it, so that every
command can run alone on the previous stage's output. Torch-free: the serving side reads these too."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vitexport import __version__
from vitexport.errors import ArtifactError
from vitexport.preprocess import PreprocessConfig


@dataclass(frozen=True)
class ModelArtifact:
    path: Path  # the model file (ONNX, OpenVINO IR .xml, TensorRT plan)
    format: str  # "onnx" | "openvino" | "tensorrt"
    model: str  # registry name
    preprocess: PreprocessConfig
    num_classes: int
    input_name: str = "pixel_values"
    output_names: tuple[str, ...] = ("logits",)
    batch_size: int | None = None  # None: dynamic batch axis
    precision: str = "fp32"
    opset: int | None = None
    checkpoint_sha256: str | None = None
    source: str | None = None  # sidecar of the artifact this one was derived from
    validation: dict[str, Any] | None = field(default=None, compare=False)
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # stage-specific: engine profile, ...
    vitexport_version: str = __version__

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
        return d

    def save(self) -> Path:
        """Write the sidecar atomically beside the model file."""
        write_text_atomic(self.sidecar, json.dumps(self.to_dict(), indent=2) + "\n")
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
        d = json.loads(sidecar.read_text())
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder and rename it over `path`: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a sidecar is as readable as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
