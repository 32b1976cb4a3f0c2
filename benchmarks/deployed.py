"""The variant `vitexport deploy` chose for a model, read from the Triton repository it wrote (each version folder
holds the model file with its sidecar, so it is a loadable artifact): the benchmark measures that very file, in its
in-process row and served, instead of building its own (what `--quick` measures beside the peers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitexport.bench.runners import BenchBackend
from vitexport.errors import VitExportError
from vitexport.variants import VARIANTS

DEFAULT_REPO = Path("model_repository")  # deploy's default


@dataclass(frozen=True)
class Deployed:
    backend: BenchBackend  # the in-process row that measures it
    path: Path  # the model file in the repository's version folder
    served_as: str  # its name in the repository
    version: int


def find_deployed(repo: Path, model: str, given: str = "") -> Deployed | None:
    """The latest version of the repository's model whose sidecar names `model` (the registry's canonical name or an
    imported file's), preferring the folder named as the user named the model (`given`); None where there is none
    (or no repository). A version whose files changed since deploy wrote them is refused in one line."""
    if not repo.is_dir():
        return None
    found = []
    for folder in sorted(repo.iterdir()):
        versions = sorted((int(p.name), p) for p in folder.glob("[0-9]*") if p.is_dir() and p.name.isdigit())
        if not (folder / "config.pbtxt").is_file() or not versions:
            continue
        version, path = versions[-1]
        model_file = _model_file(path)
        if model_file is not None:
            found.append((folder.name, version, model_file))
    for name, version, model_file in sorted(found, key=lambda f: (f[0] != given, f[0] != model)):
        from vitexport.artifacts import load_artifact

        try:
            artifact = load_artifact(model_file)
        except VitExportError as e:
            raise VitExportError(f"the deployed {name} in {repo}: {e}") from None
        if artifact.model != model:
            continue
        row = next(
            (v for v in VARIANTS if v.format.value == artifact.format and v.precision == artifact.precision), None
        )
        if row is None or row.bench_row is None:
            return None
        return Deployed(BenchBackend(row.bench_row), model_file, name, version)
    return None


def _model_file(version: Path) -> Path | None:
    """The version folder's model file: the one its sidecar (`<file>.json`) describes."""
    for sidecar in sorted(version.glob("*.json")):
        model_file = sidecar.with_suffix("")
        if model_file.is_file() and model_file.suffix in (".onnx", ".xml"):
            return model_file
    return None
