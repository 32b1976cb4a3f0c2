"""The folder transformers' `save_pretrained` and Optimum's ONNX export leave: `model.onnx`, `preprocessor_config.json`
and `config.json` side by side. `vitexport import` reads what the graph does not say from them: the preprocessing,
the class names (`id2label`) and the head (`architectures`), so such a folder imports with no flags.

Optimum writes the head's outputs under transformers' names: `logits` for `*ForImageClassification` (DeiT's
distilled `*WithTeacher` too: the mean of its two heads), `last_hidden_state` and, where the model pools,
`pooler_output` for a bare `*Model`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitexport.errors import ArtifactError, first_line
from vitexport.fileio import read_user_text

MAX_CONFIG_BYTES = 1 << 20  # far above any real config.json or preprocessor_config.json
MODEL_FILE = "model.onnx"  # Optimum's name for the graph
CLASSIFIER_HEADS = ("ForImageClassification", "ForImageClassificationWithTeacher")
POOLED_OUTPUT = "pooler_output"  # a bare model's pooled N x D embedding, as transformers names it
ACCEPTED = "import takes image classifiers (*ForImageClassification) and bare *Model embedders with a pooled output"


@dataclass(frozen=True)
class Layout:
    """The graph and the Hugging Face files beside it (None: not there)."""

    onnx: Path
    preprocessor_config: Path | None
    config: Path | None


@dataclass(frozen=True)
class HubConfig:
    """What `config.json` says that import uses."""

    path: Path
    architecture: str | None
    labels: tuple[str, ...] | None  # id2label in index order; None for a head that has no classes
    num_channels: int | None
    transformers_major: int | None  # of `transformers_version`: which transformers wrote the folder

    @property
    def processor_backend(self) -> str | None:
        """The resize backend the transformers that wrote the folder loads its processor with: 5 loads torchvision
        for every type (and writes the same type for both), 4 decides by the type's name (None: from the file)."""
        return "torchvision" if self.transformers_major is not None and self.transformers_major >= 5 else None


@dataclass(frozen=True)
class Head:
    """The task and output the head's architecture implies."""

    embeddings: bool
    output: str | None  # None: the graph's only output, or the one the user named


def find_layout(path: Path) -> Layout:
    """`path` is the folder (its `model.onnx`) or the ONNX file itself; the config files beside it when present."""
    if path.is_dir():
        onnx = path / MODEL_FILE
        if not onnx.exists():
            raise ArtifactError(f"{path} holds no {MODEL_FILE} (Optimum's export writes one): name the .onnx file")
    elif not path.exists():
        raise ArtifactError(f"no such file or folder: {path}")
    else:
        onnx = path
    beside = onnx.parent
    pre, config = beside / "preprocessor_config.json", beside / "config.json"
    return Layout(onnx, pre if pre.is_file() else None, config if config.is_file() else None)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A small JSON object a user's folder holds; ArtifactError in one line when it is not one."""
    try:
        d = json.loads(read_user_text(path, what, limit=MAX_CONFIG_BYTES, error=ArtifactError))
    except ValueError as e:
        raise ArtifactError(f"cannot read {path}: {first_line(e)}") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"{path} holds a JSON {type(d).__name__}, not an object: not a {what}")
    return d


def read_hub_config(path: Path) -> HubConfig:
    """`config.json`: the first of `architectures`, and `id2label` as names in index order for a classifier."""
    d = read_json(path, "model config")
    architectures = d.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ArtifactError(f"{path}'s architectures is {architectures!r}: expected a list of class names")
    architecture = architectures[0] if architectures else None
    classifier = architecture is not None and architecture.endswith(CLASSIFIER_HEADS)
    labels = _labels(path, d.get("id2label")) if classifier and d.get("id2label") else None
    channels = d.get("num_channels")
    version = re.match(r"(\d+)\.", str(d.get("transformers_version", "")))
    major = int(version[1]) if version else None
    return HubConfig(path, architecture, labels, channels if isinstance(channels, int) else None, major)


def _labels(path: Path, id2label: Any) -> tuple[str, ...]:
    """id2label's names ordered by index; its indices must be 0..n-1, each once."""
    if not isinstance(id2label, dict):
        raise ArtifactError(f"{path}'s id2label is a {type(id2label).__name__}, not an index -> name object")
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise ArtifactError(f"{path}'s id2label has a key that is not a class index: {list(id2label)[:5]}") from None
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise ArtifactError(
            f"{path}'s id2label names {len(by_index)} classes but has no name for index {missing[0]} "
            f"(indices run {min(by_index)} to {max(by_index)})"
        )
    return tuple(by_index[i] for i in range(len(by_index)))


def head(config: HubConfig, outputs: dict[str, list[int | str | None]], embeddings: bool) -> Head:
    """The task and output of `config`'s architecture, given the graph's outputs (name -> dims); `embeddings` is the
    user's flag. ArtifactError in one line for a head import cannot serve or a flag that contradicts the file."""
    arch = config.architecture
    if arch is None:
        return Head(embeddings, None)
    if arch.endswith(CLASSIFIER_HEADS):
        if embeddings:
            raise ArtifactError(f"--embeddings, but {config.path} says {arch}: a classifier, whose output is logits")
        return Head(False, "logits" if "logits" in outputs else None)
    if "For" not in arch and arch.endswith("Model"):
        pooled = outputs.get(POOLED_OUTPUT)
        if pooled is not None and len(pooled) == 2:
            return Head(True, POOLED_OUTPUT)
        shapes = ", ".join(f"{name} {_shape(dims)}" for name, dims in outputs.items())
        raise ArtifactError(
            f"{arch} has no head and answers {shapes}, not a pooled N x D embedding: export it with its "
            f"classification head (optimum-cli --task image-classification) or pool it in the graph ({ACCEPTED})"
        )
    if "ForObjectDetection" in arch:
        raise ArtifactError(
            f"{arch} is a detector: {ACCEPTED}; DETR's Hugging Face checkpoints load with "
            "`vitexport onnx detr_resnet50 --checkpoint model.safetensors` (docs/models.md)"
        )
    raise ArtifactError(f"{config.path} says {arch}: {ACCEPTED}")


def _shape(dims: list[int | str | None]) -> str:
    return " x ".join("N" if i == 0 else str(d) if isinstance(d, int) and d > 0 else "?" for i, d in enumerate(dims))
