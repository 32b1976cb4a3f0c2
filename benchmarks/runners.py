"""In-process runners behind one small interface, `infer(batch) -> logits`, and the backends that make them.

Our gated paths (the optimize stage's variants, which passed the accuracy gate) and the peers they must beat are
all built here from a picklable `RunnerSpec`, so that a worker process can build its own runner: each runtime is
measured in its own process (docs/benchmarks.md, "Hygiene": ORT's spinning threads and torch's OpenMP threads
slow whatever shares their process).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from vitexport import variants
from vitexport.tasks import Task
from vitexport.variants import VARIANTS, Variant


class BenchBackend(str, Enum):
    torch = "torch"  # peer: our PyTorch model, eager
    torch_compile = "torch-compile"  # peer: the same under torch.compile (inductor)
    timm = "timm"  # peer: timm's model of the same name, eager (classifiers)
    transformers = "transformers"  # peer: Hugging Face transformers' DetrForObjectDetection, eager (detectors)
    onnxruntime_plain = "onnxruntime-plain"  # peer: the exported ONNX as is on ONNX Runtime
    openvino_plain = "openvino-plain"  # peer: OpenVINO reading the exported ONNX with its own defaults
    onnxruntime = "onnxruntime"  # ours: fused fp32 variant
    onnxruntime_int8 = "onnxruntime-int8"  # ours: dynamic (ViT) or static Q/DQ (ResNet) INT8
    openvino_bf16 = "openvino-bf16"  # ours: OpenVINO IR with the bf16 hint
    openvino_int8 = "openvino-int8"  # ours: NNCF post-training quantized IR
    tensorrt = "tensorrt"  # ours: a TensorRT engine (GPU hosts only)
    triton_grpc = "triton-grpc"  # ours, served: Triton's Python backend running the onnxruntime variant
    triton_http = "triton-http"
    triton_image = "triton-image"  # ours, served: photographs (JPEG, PNG) to the `_image` ensemble, beside tensors

    @property
    def peer(self) -> bool:
        return self in PEERS

    @property
    def served(self) -> bool:
        return self in (BenchBackend.triton_grpc, BenchBackend.triton_http, BenchBackend.triton_image)

    def applies_to(self, task: Task) -> bool:
        """Each reference implementation runs its own kind of model: timm has no detectors, and transformers is the
        detectors' reference here (the classifiers' is timm): the task names its own."""
        return self not in REFERENCE_PEERS or self.value == task.reference_peer

    @property
    def variant(self) -> Variant | None:
        """The row of the variant table this backend measures (ours; None for the peers and the served rows)."""
        return next((v for v in VARIANTS if v.bench_row == self.value), None)

    @property
    def builds(self) -> bool:
        """Whether the optimize stage makes its model file (our CPU variants; engines are `vitexport trt`'s)."""
        return self.variant is not None and self is not BenchBackend.tensorrt

    @property
    def precision(self) -> str:
        """The nominal compute precision; OpenVINO reports what it really ran in (bf16 falls back to f32 on CPUs
        without BF16 instructions), and the worker overrides this with it."""
        return self.variant.precision.value if self.variant else "fp32"

    @classmethod
    def parse_list(cls, text: str) -> tuple[BenchBackend, ...]:
        """`--backends torch,openvino-int8`: each named once, in the order given."""
        from vitexport.errors import VitExportError

        names = [b.strip() for b in text.split(",") if b.strip()]
        valid = [b.value for b in cls]
        bad = [b for b in names if b not in valid]
        if bad or not names:
            raise VitExportError(f"--backends must be among {', '.join(valid)}, not {', '.join(bad) or 'nothing'}")
        return tuple(cls(b) for b in dict.fromkeys(names))


PEERS = (
    BenchBackend.torch,
    BenchBackend.torch_compile,
    BenchBackend.timm,
    BenchBackend.transformers,
    BenchBackend.onnxruntime_plain,
    BenchBackend.openvino_plain,
)
REFERENCE_PEERS = (BenchBackend.timm, BenchBackend.transformers)  # each a task's independent implementation
ALL_BACKENDS = tuple(BenchBackend)
# What `vitexport deploy` chooses among: the variant table's deployable rows, as this benchmark names them.
DEPLOYABLE = tuple(BenchBackend(v.bench_row) for v in variants.DEPLOYABLE if v.bench_row)
# Run a PyTorch model, no file.
TORCH_PEERS = (BenchBackend.torch, BenchBackend.torch_compile, BenchBackend.timm, BenchBackend.transformers)
QUICK_BACKENDS = (BenchBackend.torch, BenchBackend.onnxruntime_plain)


class Runner(Protocol):
    """What the sweep measures: one call is one batch, (B, 3, S, S) float32 images -> its first output, float32
    (a detector's padding mask is all ones: a full canvas; the work does not depend on it)."""

    name: str
    precision: str  # the precision it really computes in: fp32, bf16, int8

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RunnerSpec:
    """Everything a worker process needs to build a runner (picklable: no modules, no sessions)."""

    backend: BenchBackend
    model: str
    threads: int
    artifact: Path | None = None  # the model file (ONNX, IR, plan) for the runtime backends


@dataclass
class _Callable:
    name: str
    precision: str
    fn: object

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(batch)


def build_runner(spec: RunnerSpec) -> Runner:
    """Build the runner in this process; raise VitExportError (one line) when the backend cannot run here."""
    b = spec.backend
    if b in TORCH_PEERS:
        return _torch_runner(spec)
    if b is BenchBackend.tensorrt:
        return _tensorrt_runner(spec)
    if b in (BenchBackend.onnxruntime, BenchBackend.onnxruntime_plain, BenchBackend.onnxruntime_int8):
        return _artifact_runner(spec, "onnxruntime")
    return _artifact_runner(spec, "openvino")


def _torch_runner(spec: RunnerSpec) -> Runner:
    import torch

    from vitexport.errors import VitExportError
    from vitexport.models import create_model

    torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    if spec.backend is BenchBackend.timm:
        from vitexport._timm_compat import import_timm

        timm = import_timm()
        name, kwargs = timm_equivalent(spec.model)
        if name not in timm.list_models():
            raise VitExportError(f"timm {timm.__version__} has no model {name}, the equivalent of {spec.model}")
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    elif spec.backend is BenchBackend.transformers:
        model = transformers_detr(spec.model)
    else:
        model = create_model(spec.model)
    if spec.backend is BenchBackend.torch_compile:
        import torch._inductor.config as inductor

        # Measured: ResNet-50 gains nothing without freezing (weights folded as constants, conv+bn fused), and
        # the `options={"freezing": True}` form of torch.compile is ignored; the config flag works.
        inductor.freezing = True
        model = torch.compile(model, dynamic=False)  # one graph per batch size, compiled during the warm-up

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(batch))
        out = out.logits if hasattr(out, "logits") else out  # transformers' ModelOutput
        return (out[0] if isinstance(out, tuple) else out).numpy()

    return _Callable(spec.backend.value, "fp32", infer)


def transformers_equivalent(model: str) -> dict[str, object]:
    """The `transformers.DetrConfig` arguments of our DETR of that name. Raises VitExportError (one line, recorded
    as the peer's skip) where transformers has no equivalent."""
    from vitexport.errors import VitExportError
    from vitexport.models import get_spec

    ours = get_spec(model)
    if ours.family != "detr" or ours.for_tests:
        raise VitExportError(f"{ours.name} has no transformers DETR equivalent (the full-size DETRs have)")
    cfg = ours.arch
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}.get(cfg.backbone.layers)
    if depth is None:
        raise VitExportError(f"{ours.name}'s backbone is no ResNet-50 or -101; transformers' DETR has no equivalent")
    # timm's ResNet, as the Hub's facebook/detr-resnet-* use; random weights: the work does not depend on them.
    return {
        "backbone": f"resnet{depth}",
        "use_pretrained_backbone": False,
        "num_labels": cfg.num_classes,
        "num_queries": cfg.num_queries,
    }


def transformers_detr(model: str):
    """transformers' DetrForObjectDetection configured as our DETR of that name."""
    from vitexport._timm_compat import declare_torchvision_ops
    from vitexport.errors import VitExportError

    config = transformers_equivalent(model)

    declare_torchvision_ops()  # transformers' image utilities import torchvision's Python code
    try:
        import transformers
    except ImportError:
        raise VitExportError("transformers is not installed (the dev extras bring it)") from None
    return transformers.DetrForObjectDetection(transformers.DetrConfig(**config)).eval()


def timm_equivalent(model: str) -> tuple[str, dict[str, object]]:
    """The timm model that computes what ours does: its name and `timm.create_model` arguments. Raises
    VitExportError (one line, recorded as the peer's skip) where timm has none."""
    from vitexport.errors import VitExportError
    from vitexport.models import get_spec

    ours = get_spec(model)
    if ours.for_tests:  # timm's own test_* models are other architectures than ours
        raise VitExportError(f"{ours.name} is a tiny test config; timm has no model of its architecture")
    if ours.family == "mae" and ours.hub_id:
        # timm has no mae_vit_* names: it hosts MAE only as pretrained tags of its ViTs (vit_base_patch16_224.mae,
        # encoders without a classifier). The fine-tuned classifier we register is that ViT with the mean of the
        # patch tokens (global_pool="avg", which turns fc_norm on and the final norm off).
        return ours.hub_id.split(".")[0], {"global_pool": "avg"}
    return ours.name, {}


def timm_peer_name(model: str) -> str:
    """timm's model as the report names it: `vit_base_patch16_224(global_pool='avg')`."""
    name, kwargs = timm_equivalent(model)
    return name + (f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else "")


def _artifact_runner(spec: RunnerSpec, runtime: str) -> Runner:
    from vitexport.artifacts import load_artifact
    from vitexport.export.runners import feeds, load_runner

    assert spec.artifact is not None
    artifact = load_artifact(spec.artifact)
    precision = spec.backend.precision
    if spec.backend is BenchBackend.openvino_plain:
        # OpenVINO's own defaults, as a user who hands it the plain ONNX gets them (no precision hint).
        import openvino.properties.hint as hints

        from vitexport.export.openvino import compile_ir

        compiled = compile_ir(artifact.path, "int8", spec.threads)  # "int8": the mapping that sets no hint
        precision = _ov_precision(str(compiled.get_property(hints.inference_precision).get_type_name()))
        request = compiled.create_infer_request()
        output = compiled.output(artifact.output_names[0])

        def infer(batch: np.ndarray) -> np.ndarray:
            return request.infer(feeds(artifact, batch, None))[output]

        return _Callable(spec.backend.value, precision, infer)
    # ORT's idle spinning would slow the other workers between our windows: off, as in the Triton classifier.
    run = load_runner(artifact, threads=spec.threads, spinning=False)
    if runtime == "openvino" and precision == "bf16":
        from vitexport.export.openvino import execution_precision

        precision = _ov_precision(execution_precision(artifact.path, "bf16"))

    def infer_artifact(batch: np.ndarray) -> np.ndarray:
        return run(batch)[0]

    return _Callable(spec.backend.value, precision, infer_artifact)


def _ov_precision(ov_type: str) -> str:
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(ov_type, ov_type)


def _tensorrt_runner(spec: RunnerSpec) -> Runner:
    from vitexport.artifacts import load_artifact
    from vitexport.export.cuda import DeviceSession
    from vitexport.export.runners import feeds
    from vitexport.export.tensorrt import EngineRunner, tensorrt_environment

    tensorrt_environment()  # raises the one-line reason where there is no TensorRT or GPU
    import tensorrt as trt

    assert spec.artifact is not None
    artifact = load_artifact(spec.artifact)
    device = DeviceSession().__enter__()  # lives as long as the worker process
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(artifact.path.read_bytes())
    name = artifact.output_names[0]
    run = EngineRunner(trt, engine, device)  # one context and reused buffers across the timed calls

    def infer(batch: np.ndarray) -> np.ndarray:
        return run(feeds(artifact, batch, None))[name]

    return _Callable(spec.backend.value, artifact.precision, infer)


def random_batch(batch_size: int, img_size: int, seed: int = 0) -> np.ndarray:
    """Normalised-image-like inputs; the values do not change the work any of these runtimes do."""
    return np.random.default_rng(seed).standard_normal((batch_size, 3, img_size, img_size), dtype=np.float32)
