"""What one model's rows measure: a registered model (exported here, with its PyTorch peers) or an ONNX artifact by
its file (an `vitexport import`ed classifier, or any `vitexport onnx` export), which has no PyTorch peers. A detector
(DETR) is measured as a classifier is, in images per second, its padding mask all ones (a full canvas)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitexport.errors import VitExportError
from vitexport.tasks import CLASSIFICATION


@dataclass(frozen=True)
class Subject:
    name: str  # the row's name: the registry's canonical name, or the artifact's model name
    family: str
    params: int | None
    img_size: int
    macs: int | None  # per image; None where the graph's shapes could not be inferred
    task: str = CLASSIFICATION.name  # a name in vitexport.tasks.TASKS
    artifact: Path | None = None  # the fp32 ONNX artifact for a file; None: a registered model, exported here
    given: str = ""  # as the user named it (deit_small for deit_small_patch16_224)

    @property
    def registered(self) -> bool:
        return self.artifact is None


def subject(model_or_file: str) -> Subject:
    """A registered name (unknown: one line with suggestions) or an ONNX artifact's path (no sidecar: one line)."""
    from vitexport.export.onnx import looks_like_a_file
    from vitexport.models import get_spec

    if not looks_like_a_file(model_or_file):
        spec = get_spec(model_or_file)
        return Subject(
            spec.name, spec.family, spec.num_params, spec.img_size, spec.macs(), spec.task, given=model_or_file
        )
    from vitexport.artifacts import load_artifact
    from vitexport.export.onnx_macs import onnx_macs, onnx_params

    artifact = load_artifact(model_or_file)
    if artifact.format != "onnx" or str(artifact.precision) != "fp32":
        raise VitExportError(
            f"bench takes a registered model or an fp32 ONNX artifact (it builds the variants itself); "
            f"{artifact.path.name} is {artifact.format} {artifact.precision}"
        )
    size = artifact.preprocess.input_size
    macs = onnx_macs(artifact.path, artifact.input_name, size)
    family = artifact.family or "imported"
    params = onnx_params(artifact.path)
    return Subject(artifact.model, family, params, size, macs, artifact.task, artifact.path, given=model_or_file)
