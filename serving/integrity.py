"""The repository is what was written: before Triton loads a model, every file its versions' sidecars record
(`<version>/<model file>.json`, written by serving/repository.py: the model file and its companions with their size
and sha256) is checked, and a changed, truncated or missing one is refused in one line naming it. A version without
a sidecar (an older vitexport's, a model.py-only step) has nothing recorded and is loaded as it is."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vitexport.artifacts import load_artifact
from vitexport.errors import ArtifactError, ServingError
from vitexport.serving.versions import versions


def sidecars(model_dir: Path) -> list[Path]:
    """The sidecars of a model's versions (each version holds at most one model file with its sidecar)."""
    return [s for v in versions(model_dir) for s in sorted((model_dir / str(v)).glob("*.json")) if s.is_file()]


def verify_repository(repo_dir: Path, models: Iterable[str]) -> None:
    """Raise ServingError naming the first file of these models that is not what its sidecar recorded."""
    for model in models:
        for sidecar in sidecars(repo_dir / model):
            try:
                load_artifact(sidecar)
            except ArtifactError as e:
                reason = str(e).replace("export it again", "write the model again (vitexport repo)")
                raise ServingError(f"refusing to serve {sidecar.parent}: {reason}") from None
