"""What a task is to the stages: the tensors a model of it takes and returns, how its variants are graded against
the fp32 reference and with what budgets, how its served answers are post-processed and labelled, and which
reference implementation the benchmark compares it with.

A task is data plus numpy: the core holds it, so every stage (export, serving) and the benchmark read the same
object instead of branching on a task name (optimum keeps its tasks as data in the same way). A new task is one
module in this package (see `classification.py`, `detection.py`) registered in `vitexport/tasks/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

# Triton's data type names, the ones its config and both protocols use.
FP32, INT64, BYTES = "FP32", "INT64", "BYTES"

# What `create_model(head=...)` builds: the model with its classifier, or without it (the pooled embedding).
LOGITS_HEAD, FEATURES_HEAD = "logits", "features"

NCHW = "FORMAT_NCHW"  # pixels as (channels, height, width) per item, Triton's name for it
IMAGE_INPUT = "image"  # an image ensemble's one input: the encoded image (JPEG, PNG, ...)
PIXELS = "pixel_values"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, for one item of a batch (Triton's dims: no batch axis)."""

    name: str
    dtype: str  # FP32, INT64, BYTES
    dims: tuple[int, ...]  # -1: a dimension that varies from request to request
    labelled: bool = False  # class scores, which Triton's classification extension labels (label_filename)
    # An image's layout (Triton's input `format`: FORMAT_NCHW, FORMAT_NHWC), which generic image clients read
    # (Triton's image_client.py) to lay out and size their pixels; None for a tensor that is not an image.
    format: str | None = None


@dataclass(frozen=True)
class Budget:
    """What a gate allows a variant, per precision. Each task's budget adds its own limits."""

    # Whether drift on random (Gaussian) inputs is gated or only reported. Calibrated INT8 clips activations to the
    # ranges seen on real images, so out-of-distribution noise drifts far (cosine ~0.9) while images agree.
    gate_random_inputs: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Grade:
    """A task's verdict on one input set ("random" or "images"): its own metrics (recorded in the gate report under
    the task's key) and the budget's failures."""

    metrics: dict[str, Any] | None
    failures: list[str]


@dataclass(frozen=True)
class InputSet:
    """Inputs the gate runs both models on: images (N, 3, S, S), a detector's masks (N, S, S) or None, and the class
    labels of a labelled folder or None."""

    where: str  # "random" or "images"
    batches: Sequence[tuple[np.ndarray, np.ndarray | None]]
    labels: np.ndarray | None = None


class Task(ABC):
    """The contract every task fulfils. Subclasses are stateless singletons (CLASSIFICATION, FEATURES, DETECTION)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # export: the extra input beside pixel_values (a detector's padding mask), None for none
    mask_input: ClassVar[str | None] = None
    # the gate: the report's key for the task's metrics, and what its agreement figure is called
    metrics_key: ClassVar[str]
    agreement: ClassVar[str]
    # serving: the Python-backend post-processing model (serving/backends/<file>), None to return the model's outputs
    postprocess: ClassVar[str | None] = None
    # deploy and bench: how many images each timed call carries
    timing_batch: ClassVar[int] = 8
    # bench: the independent implementation our models are compared with ("timm", "transformers")
    reference_peer: ClassVar[str]
    # serving: what a request may set for this task's answer (Triton request parameters its image ensemble forwards
    # to the post-processing, which holds their defaults in its config). Triton's response cache keys an answer on
    # the inputs alone, so only the image ensembles of tasks without any enable it.
    request_parameters: ClassVar[frozenset[str]] = frozenset()
    # bench: how many real images each variant is gated on (a 800 px DETR canvas costs seconds per image)
    bench_gate_images: ClassVar[int] = 64
    # define: what `create_model(head=...)` builds for it ("logits": with its classifier, "features": without)
    model_head: ClassVar[str] = LOGITS_HEAD
    # whether a model's input size is its own (a detector's canvas is any size: nothing in it is resampled for one)
    any_input_size: ClassVar[bool] = False
    # The fast preprocessing's budget against the exact one on the same model (export/gate.py preprocess_gate):
    # one row per task, in the task's module.
    preprocess_budget: ClassVar[Budget]

    # --- define and export ------------------------------------------------------------------------------------------
    @abstractmethod
    def output_names(self, *, all_heads: bool = False) -> tuple[str, ...]:
        """The outputs an export of this task writes (`all_heads`: DeiT's class and distillation heads too)."""

    def output_width(self, num_classes: int) -> int:
        """The last axis of the first output: the classes, an embedding's dimension, or the classes and no-object."""
        return num_classes

    # --- the gate ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def budget(self, precision: str) -> Budget:
        """This task's budget for a variant of `precision`; VitExportError where there is none."""

    @abstractmethod
    def random_inputs(self, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The random batches every variant is also graded on."""

    @abstractmethod
    def grade(
        self,
        inputs: InputSet,
        reference: list[np.ndarray],
        candidate: list[np.ndarray],
        drift: list[Any],
        budget: Budget,
        *,
        lenient: bool,
    ) -> Grade:
        """Metrics and failures of `candidate`'s outputs against `reference`'s on one input set (the batches'
        outputs concatenated); `drift` is the gate's per-output, per-batch DriftReports. `lenient`: random inputs of
        a gate that also has images, where agreement on noise decides nothing."""

    def report_metrics(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The task's metrics as the gate report's dict (and so the sidecar's `validation`) keeps them."""
        return {self.metrics_key: metrics}

    def tables(self, report: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
        """The task's metrics in a gate report's dict as (title, columns, rows) tables, for the CLI to print."""
        return []

    @abstractmethod
    def worst(self, report: Mapping[str, Any]) -> tuple[float | None, float | None]:
        """(worst cosine, worst agreement) of a gate report's dict, on images where it had them: deploy's columns."""

    # --- serving ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def model_io(
        self, *, input_name: str, output_names: Sequence[str], size: int, num_classes: int
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The served model's inputs and outputs (one item's dims)."""

    def preprocess_outputs(self, size: int) -> tuple[TensorSpec, ...]:
        """What the image ensemble's preprocessing makes of an image for this task."""
        return (TensorSpec(PIXELS, FP32, (3, size, size)),)

    def ensemble_outputs(
        self, model_outputs: Sequence[TensorSpec], settings: Mapping[str, Any]
    ) -> tuple[TensorSpec, ...]:
        """The image ensemble's answer; without post-processing, the model's outputs as they are."""
        return tuple(model_outputs)

    def postprocess_inputs(self, model_outputs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        """What the post-processing model takes: the model's outputs, and what the preprocessing kept aside."""
        return tuple(model_outputs)

    def check_settings(self, settings: Mapping[str, Any], num_classes: int) -> dict[str, str]:
        """The post-processing's settings (top-k, a score threshold) checked; returned as config parameters."""
        return {}

    def default_labels(self, num_classes: int) -> str | None:
        """The file in vitexport/serving/labels/ naming this task's usual classes (ImageNet-1k, COCO), or None."""
        return None

    @property
    def has_labels(self) -> bool:
        """Whether its served outputs carry class names."""
        return True
