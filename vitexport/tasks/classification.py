"""Classification (an image -> class scores) and features (an image -> the pooled embedding its classifier would
see): ViT, DeiT, BEiT, MAE, Swin, MobileViT, ResNet and any classifier ONNX brought by `vitexport import`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from vitexport.errors import VitExportError
from vitexport.tasks.base import (
    FEATURES_HEAD,
    FP32,
    NCHW,
    PIXELS,
    Budget,
    Grade,
    InputSet,
    Task,
    TensorSpec,
)

if TYPE_CHECKING:
    import numpy as np

LOGITS = "logits"
EMBEDDINGS = "embeddings"  # the one output of a features export: (N, D) pooled representations
# The top-k outputs of the image ensembles vitexport 0.1 wrote (0.2 answers `probabilities` alone): the client still
# reads them from such a repository.
TOP_K_LABELS, TOP_K_SCORES, TOP_K_INDICES = "labels", "scores", "indices"
PROBABILITIES = "probabilities"  # an image ensemble's softmax over every class
DEFAULT_TOP_K = 5
RANDOM_BATCHES = (1, 4)


@dataclass(frozen=True)
class Tolerance(Budget):
    """A classifier's (or embedding's) budget: drift of every output, and on a labelled folder the accuracy."""

    max_abs: float = 0.0  # on logits
    min_cosine: float = 1.0  # per sample, the worst one
    min_top1_agreement: float = 1.0
    # On a labelled image folder: the most top-1 accuracy (percentage points) a variant may lose to the reference.
    max_top1_drop: float | None = None
    # The most any class's softmax probability may move (the answer a served classifier gives); None: not gated.
    max_probability_abs: float | None = None


# One place for the budgets. fp32 ONNX vs PyTorch differs only by kernel order: ~1e-6 on ViT-B logits.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999),
    # Optimized variants, measured against the fp32 reference (export/gate.py). Max abs is loose where the logit
    # scale decides it (INT8); cosine, top-1 agreement and the accuracy drop carry the gate there.
    # FP16 with FP32 LayerNorm/Softmax: ~2e-3 on DeiT logits.
    "fp16": Tolerance(max_abs=0.05, min_cosine=0.9995, min_top1_agreement=0.97, max_top1_drop=0.3),
    # BF16 (OpenVINO): 8-bit mantissa, ~0.02 on DeiT-B logits, cosine 0.9999.
    "bf16": Tolerance(max_abs=0.5, min_cosine=0.995, min_top1_agreement=0.9, max_top1_drop=0.5),
    "int8": Tolerance(
        max_abs=float("inf"), min_cosine=0.98, min_top1_agreement=0.85, max_top1_drop=1.0, gate_random_inputs=False
    ),
}


# The fast preprocessing (a reduced-size JPEG decode, a box pre-reduction, both stopping at twice the resize's output)
# against the exact one, on the same model and photographs of 0.3, 2 and 12 MP, JPEG and PNG (export/gate.py
# preprocess_gate). Its pixels differ by ~0.001 on average (in [0, 1] units, docs/benchmarks.md); a photograph's top
# class must not change, and the outputs stay within a cosine that FP16 would pass. Measured on the tests' tiny
# classifiers: cosine 0.99990 (ViT), 0.99983 (DeiT), 0.99998 (ResNet). Logit scales decide max abs, so it is not gated;
# what a client reads is: no class's probability may move by more than 5e-4, half the 1e-3 within which the exact path
# answers what transformers' processor + model do (tests/test_serving_hugging_face.py). It binds an fp32 variant only
# (export/gate.py preprocess_gate): a quantized one's own precision moves probabilities by more than that.
PREPROCESS_TOLERANCE = Tolerance(
    max_abs=float("inf"), min_cosine=0.995, min_top1_agreement=1.0, max_probability_abs=5e-4
)
# An embedding has no classes: its drift alone.
FEATURES_PREPROCESS_TOLERANCE = Tolerance(max_abs=float("inf"), min_cosine=0.995, min_top1_agreement=1.0)


@dataclass(frozen=True)
class Accuracy:
    images: int
    reference_top1: float  # percent
    reference_top5: float
    candidate_top1: float
    candidate_top5: float

    @property
    def top1_drop(self) -> float:
        return self.reference_top1 - self.candidate_top1

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "reference_top1": self.reference_top1,
            "reference_top5": self.reference_top5,
            "candidate_top1": self.candidate_top1,
            "candidate_top5": self.candidate_top5,
            "top1_drop": self.top1_drop,
        }


def accuracy(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-5 accuracy (percent) of both models' scores (N, C) on class indices (N,)."""
    import numpy as np

    def topk(logits: np.ndarray, k: int) -> float:
        top = np.argsort(-logits, axis=1)[:, : min(k, logits.shape[1])]
        return float((top == labels[:, None]).any(axis=1).mean() * 100)

    return Accuracy(len(labels), topk(reference, 1), topk(reference, 5), topk(candidate, 1), topk(candidate, 5))


class Classification(Task):
    name = "classification"
    summary = "pixel_values (N, 3, S, S) -> logits (N, classes); served as labelled probabilities (top k by Triton)"
    metrics_key = "accuracy"
    agreement = "top-1 agreement"
    postprocess: ClassVar[str | None] = "topk_model.py"
    reference_peer = "timm"
    preprocess_budget = PREPROCESS_TOLERANCE

    def output_names(self, *, all_heads: bool = False) -> tuple[str, ...]:
        return (LOGITS, "logits_cls", "logits_dist") if all_heads else (LOGITS,)

    def budget(self, precision: str) -> Tolerance:
        if precision not in TOLERANCES:
            raise VitExportError(f"no accuracy budget for precision {precision!r}; known: {', '.join(TOLERANCES)}")
        return TOLERANCES[precision]

    def random_inputs(self, size: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [(rng.standard_normal((b, 3, size, size), dtype="float32"), None) for b in RANDOM_BATCHES]

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
        assert isinstance(budget, Tolerance)
        # On Gaussian noise an untrained (or any) model's top two logits can be closer than BF16/INT8 rounding, and
        # a flipped sample says nothing: with real images present, top-1 agreement is judged on them alone.
        tol = replace(budget, min_top1_agreement=0.0) if lenient else budget
        failures = [f for r in drift for f in r.failures(tol)]
        if inputs.labels is None or self is not CLASSIFICATION:
            return Grade(None, failures)
        acc = accuracy(reference[0], candidate[0], inputs.labels)
        if budget.max_top1_drop is not None and acc.top1_drop > budget.max_top1_drop:
            failures.append(
                f"top-1 accuracy {acc.candidate_top1:.2f}% vs reference {acc.reference_top1:.2f}%: "
                f"drop {acc.top1_drop:.2f} pt > {budget.max_top1_drop:g} pt on {acc.images} images"
            )
        return Grade(acc.to_dict(), failures)

    def report_metrics(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        return {"accuracy": metrics[-1] if metrics else None}  # only a labelled folder has any

    def tables(self, report: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
        acc = report.get("accuracy")
        if not acc:
            return []
        rows = [
            ["reference", f"{acc['reference_top1']:.2f}", f"{acc['reference_top5']:.2f}"],
            ["candidate", f"{acc['candidate_top1']:.2f}", f"{acc['candidate_top5']:.2f}"],
        ]
        return [(f"accuracy on {acc['images']} labelled images", ["", "top-1 %", "top-5 %"], rows)]

    def worst(self, report: Mapping[str, Any]) -> tuple[float | None, float | None]:
        drift = report.get("images") or report.get("random") or []
        if not drift:
            return None, None
        agreements = [r["top1_agreement"] for r in drift if r.get("top1_agreement") is not None]
        return min(r["cosine"] for r in drift), min(agreements, default=None)

    def model_io(
        self, *, input_name: str, output_names: Sequence[str], size: int, num_classes: int
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        inputs = (TensorSpec(input_name, FP32, (3, size, size), format=NCHW),)
        labelled = self.has_labels
        return inputs, tuple(TensorSpec(name, FP32, (num_classes,), labelled=labelled) for name in output_names)

    def ensemble_outputs(
        self, model_outputs: Sequence[TensorSpec], settings: Mapping[str, Any]
    ) -> tuple[TensorSpec, ...]:
        """The softmax of every class, labelled, and nothing else: Triton's classification extension ranks it into
        the top k ("value:index:label", k from the request's class_count), which is how our client asks for its top
        k (the repository's top_k is the default it reads from the ensemble's parameters) and what Triton's
        ensemble_image_client.py asks of every output of the ensemble (so every output must be numeric and labelled
        by class: a string output kills Triton 2.51, and a ranked top-k vector would be labelled by its rank)."""
        return (TensorSpec(PROBABILITIES, FP32, model_outputs[0].dims[-1:], labelled=True),)

    def postprocess_inputs(self, model_outputs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        return tuple(model_outputs[:1])  # the averaged logits of a `--heads all` export

    def check_settings(self, settings: Mapping[str, Any], num_classes: int) -> dict[str, str]:
        asked = settings.get("top_k")
        # Unasked, the default top-k, or every class of a model with fewer; asked, exactly that or one line.
        top_k = min(DEFAULT_TOP_K, num_classes) if asked is None else asked
        if not 1 <= top_k <= num_classes:
            raise VitExportError(f"top-k must be within 1..{num_classes}, got {top_k}")
        return {"top_k": str(top_k)}

    def default_labels(self, num_classes: int) -> str | None:
        return "imagenet1k.txt" if num_classes == 1000 else None


class Features(Classification):
    """The pooled representation a classifier's head would see, (N, D): for search and retrieval. No classes, so no
    labels and no top-k; graded by drift alone."""

    name = "features"
    summary = "pixel_values (N, 3, S, S) -> embeddings (N, D), the pooled representation"
    metrics_key = "accuracy"  # always None: an embedding has no classes to be accurate about
    agreement = "top-1 agreement"
    postprocess = None
    model_head = FEATURES_HEAD
    preprocess_budget = FEATURES_PREPROCESS_TOLERANCE

    def output_names(self, *, all_heads: bool = False) -> tuple[str, ...]:
        return (EMBEDDINGS,)

    def ensemble_outputs(
        self, model_outputs: Sequence[TensorSpec], settings: Mapping[str, Any]
    ) -> tuple[TensorSpec, ...]:
        # Whatever the model calls its output (an imported model keeps its own names), the ensemble answers
        # `embeddings`, so that clients recognise it.
        (output,) = model_outputs
        return (TensorSpec(EMBEDDINGS, output.dtype, output.dims),)

    def check_settings(self, settings: Mapping[str, Any], num_classes: int) -> dict[str, str]:
        return {}

    def default_labels(self, num_classes: int) -> str | None:
        return None

    @property
    def has_labels(self) -> bool:
        return False


CLASSIFICATION = Classification()
FEATURES = Features()
PIXEL_VALUES = PIXELS
