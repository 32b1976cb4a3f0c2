"""A model's versions in a Triton repository, written all or nothing: each staged in a hidden folder inside its
model folder (same file system; Triton ignores non-numeric folders there) and renamed into place, so a server never
sees half a version; an existing version is never replaced. config.pbtxt and labels.txt are staged with it and moved
over the old ones only after that rename, and a failure anywhere takes back what the call wrote (every part of an
ensemble), so the models stay as they were."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vitexport.errors import ServingError
from vitexport.fileio import STAGING_PREFIX, remove_dead_staging, write_atomic
from vitexport.serving import config as cfg


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass(frozen=True)
class ModelPart:
    """One model a call writes: its folder, config, the files of its new version, its labels.txt (None: none) and
    the copied model file's sidecar (the model's only)."""

    model_dir: Path
    config: cfg.pb.ModelConfig
    files: dict[str, Path]
    labels: str | None = None
    sidecar: dict | None = None
    # Files beside the config by relative name: perf_analyzer's input data, Triton's warmup/ samples (which 2.51 reads
    # from the model folder, not a version's). Replaced with the config; a file no longer written is left.
    beside: Mapping[str, str | bytes] = field(default_factory=dict)


def write_parts(parts: list[ModelPart], version: int) -> None:
    """Write every part's version, or none: an ensemble whose parts disagree (a new model, an old preprocessing)
    would not load."""
    undo: list[_Undo] = []
    try:
        for part in parts:
            undo.append(_write_model(part, version))
    except BaseException:
        for step in reversed(undo):
            step.revert()
        raise


MAX_VERSION = 2**31 - 1  # Triton reads version folders with stoll and keeps them in int64: far above, it dies


def next_version(model_dir: Path, version: int | None) -> int:
    existing = versions(model_dir)
    if version is None:
        return (existing[-1] + 1) if existing else 1
    if not 1 <= version <= MAX_VERSION:
        raise ServingError(f"version must be 1..{MAX_VERSION}, got {version}")
    if version in existing:
        raise ServingError(f"{model_dir}/{version} already exists; versions are never overwritten")
    return version


@dataclass(frozen=True)
class _Undo:
    """How to take back one written model: its new version folder, and the files beside it as they were."""

    version_dir: Path
    previous: dict[Path, bytes | None]  # config.pbtxt, labels.txt, ... -> former content (None: there was none)

    def revert(self) -> None:
        shutil.rmtree(self.version_dir, ignore_errors=True)
        for path, text in self.previous.items():
            with contextlib.suppress(OSError):
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    write_atomic(path, text)
        with contextlib.suppress(OSError):  # a model folder the call created, empty again (rmdir refuses otherwise)
            self.version_dir.parent.rmdir()


def _write_model(part: ModelPart, version: int) -> _Undo:
    """Stage the version folder, config.pbtxt, labels.txt and the other files beside them in one hidden folder,
    rename the version into place, then move the files beside over the old ones: until the version exists, the model
    is untouched."""
    model_dir, config, files, labels, sidecar = part.model_dir, part.config, part.files, part.labels, part.sidecar
    text = cfg.render(config)
    cfg.parse(text, f"{config.name}/config.pbtxt")  # what we write must read back
    created = not model_dir.exists()
    try:  # a read-only repository (or a file where the model folder goes) fails here: one line, as below
        model_dir.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(model_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir))
    except OSError as e:
        raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from None
    target = model_dir / str(version)
    # Config last: it is what makes a polling server (re)load the model with the new settings.
    extra = {model_dir / name: content for name, content in part.beside.items()}
    labelled = {model_dir / cfg.LABELS_FILE: labels} if labels is not None else {}
    beside: dict[Path, str | bytes] = extra | labelled | {model_dir / "config.pbtxt": text}
    undo = _Undo(target, {path: _read_bytes(path) for path in beside})
    renamed = False
    try:
        staged = staging / "version"
        staged.mkdir()
        staged.chmod(0o755)  # explicit: a server running as another user must be able to read the version
        for name, source in files.items():
            shutil.copyfile(source, staged / name)
        if sidecar is not None:
            write_atomic(staged / f"{sidecar['path']}.json", json.dumps(sidecar, indent=2) + "\n")
        for i, (path, content) in enumerate(beside.items()):
            write_atomic(staging / f"{i}-{path.name}", content)
        if target.exists():  # a concurrent writer got there first
            raise ServingError(f"{target} already exists; versions are never overwritten")
        # rename(2) refuses a non-empty target, so even a racing writer cannot replace a finished version.
        staged.rename(target)
        renamed = True
        for i, path in enumerate(beside):
            path.parent.mkdir(exist_ok=True)  # warmup/
            os.replace(staging / f"{i}-{path.name}", path)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if renamed:
            undo.revert()
        elif created:  # nothing of the model was visible yet: leave no empty folder behind either
            with contextlib.suppress(OSError):
                model_dir.rmdir()
        if isinstance(e, OSError):
            raise ServingError(f"cannot write {model_dir}: {e.strerror or e}") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return undo


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ServingError(f"cannot read {path}: {e.strerror or e}") from None
