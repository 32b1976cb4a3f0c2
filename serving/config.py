"""Triton model configurations built as data through Triton's own `ModelConfig` protobuf and rendered with
`google.protobuf.text_format`, so a misspelt field fails here rather than when the server loads the model."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ServingError
from vitexport.postprocess import check_settings
from vitexport.preprocess import PreprocessConfig
from vitexport.variants import ServingBackend

LABELS_FILE = "labels.txt"
IMAGE_INPUT = "image"  # the ensemble's encoded-image input
PIXELS = "pixel_values"
TOP_K_LABELS, TOP_K_SCORES, TOP_K_INDICES = "labels", "scores", "indices"
EMBEDDINGS = "embeddings"  # the one output of a `--head features` export: (N, D) pooled representations
DEFAULT_TOP_K = 5
# Detection (DETR): the preprocessing also gives the padding mask and the original (height, width); the ensemble
# answers boxes (x0, y0, x1, y1 in the original pixels), scores, labels, classes, and `count`, the real detections.
MASK = "pixel_mask"
IMAGE_SIZE = "image_size"
BOXES, SCORES, LABELS, CLASSES, COUNT = "boxes", "scores", "labels", "classes", "count"
DETECTION_OUTPUTS = (BOXES, SCORES, LABELS, CLASSES, COUNT)
DEFAULT_THRESHOLD = 0.5  # transformers' post_process_object_detection default
DEFAULT_DETECTIONS = 100  # top-k detections per image: all of DETR's 100 queries
TASK = "vitexport_task"  # the parameter that says a model (or ensemble) is a detector: clients read it, not names
MAX_INSTANCES = 64  # model instances: each a stub process holding its own copy of the model

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as pb


def import_tritonclient(module: str) -> ModuleType:
    """A tritonclient module, or one line saying how to install it: it comes with the `serve` extra only."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ServingError(f"Triton's client is not installed ({e}): pip install 'vitexport[serve]'") from None


@functools.cache
def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig protobuf module. Imported on first use: `tritonclient.grpc` takes ~0.2 s to import and
    comes with the `serve` extra only, which `vitexport --help` and the export commands must not need."""
    import_tritonclient("tritonclient.grpc")  # as `from tritonclient.grpc import ...`: the package first
    return import_tritonclient("tritonclient.grpc.model_config_pb2")


def __getattr__(name: str) -> ModuleType:
    # `cfg.pb` keeps working for callers (pb.ModelConfig, pb.TYPE_STRING) without importing tritonclient eagerly.
    if name == "pb":
        return model_config_pb2()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Triton keeps the batch size in an int32 and sizes its buffers by it; no image model batches more on one server.
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: Triton merges queued requests up to max_batch_size, waiting at most max_queue_delay_us."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.max_batch_size <= MAX_BATCH_SIZE:
            raise ServingError(f"max batch size must be 0..{MAX_BATCH_SIZE}, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ServingError(f"queue delay must be >= 0 microseconds, got {self.max_queue_delay_us}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ServingError(f"preferred batch sizes {bad} are outside 1..{self.max_batch_size} (the max batch size)")


def returns_embeddings(outputs: Sequence[str]) -> bool:
    """Whether a model's outputs (an artifact's output_names, a config's output names) are an embedding, not logits:
    such a model has no classes, so no labels and no top-k."""
    return tuple(outputs) == (EMBEDDINGS,)


def batching_from_options(
    max_batch_size: int | None, preferred_batch_sizes: tuple[int, ...] = (), max_queue_delay_us: int | None = None
) -> Batching | None:
    """The batching the user asked for, or None for each backend's default (an engine's comes from its profile)."""
    if (
        max_batch_size is None
        and not preferred_batch_sizes
        and max_queue_delay_us in (None, Batching.max_queue_delay_us)
    ):
        return None
    size = max_batch_size if max_batch_size is not None else Batching.max_batch_size
    delay = Batching.max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
    return Batching(size, tuple(preferred_batch_sizes), delay)


def _string_parameters(config: pb.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _dynamic_batching(config: pb.ModelConfig, batching: Batching) -> None:
    if batching.max_batch_size > 0:
        config.dynamic_batching.preferred_batch_size.extend(sorted(set(batching.preferred_batch_sizes)))
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us


def classifier_config(
    name: str,
    artifact: ModelArtifact,
    *,
    backend: ServingBackend,
    batching: Batching,
    instances: int = 1,
    model_filename: str,
    cc_model_filenames: dict[str, str] | None = None,
    labels: str | None = LABELS_FILE,
    tensorrt_accelerator: bool = False,
    intra_op_threads: int = 0,
) -> pb.ModelConfig:
    """The classifier: pixel_values (3, S, S) -> logits (num_classes,), labelled for the classification extension;
    or, for a `--head features` export, -> embeddings (D,), with no labels (an embedding has no classes)."""
    if not 1 <= instances <= MAX_INSTANCES:  # each is a process with its own copy of the model
        raise ServingError(f"instance count must be 1..{MAX_INSTANCES} (one process each), got {instances}")
    if artifact.format not in backend.formats:
        raise ServingError(
            f"backend {backend.value} serves {' or '.join(backend.formats)} models, not {artifact.format}"
        )
    io_type = artifact.io_type
    if io_type != "fp32":
        # The preprocessing model, the top-k model and the client all exchange FP32 pixels and logits; a config
        # declaring FP32 for an FP16-I/O graph would have every request fail at run time instead.
        raise ServingError(
            f"{artifact.path.name} takes and returns {io_type} tensors; served models exchange fp32: "
            "optimize it with --io-type fp32 (the default)"
        )
    if tensorrt_accelerator and backend is not ServingBackend.onnxruntime:
        raise ServingError("the TensorRT execution accelerator is an option of the onnxruntime backend only")
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name)
    S = artifact.preprocess.input_size
    if artifact.batch_size is not None:
        # A fixed-batch graph accepts exactly that batch, so Triton must not batch: the batch is part of the dims.
        config.max_batch_size = 0
        input_dims, output_prefix = [artifact.batch_size, 3, S, S], [artifact.batch_size]
    else:
        config.max_batch_size = batching.max_batch_size
        input_dims, output_prefix = [3, S, S], []
        _dynamic_batching(config, batching)
    config.input.add(name=artifact.input_name, data_type=pb.TYPE_FP32, dims=input_dims)
    if artifact.task == "detection":
        _detector_io(config, artifact, output_prefix)
    else:
        for output in artifact.output_names:
            out = config.output.add(name=output, data_type=pb.TYPE_FP32, dims=[*output_prefix, artifact.num_classes])
            if labels and not (artifact.head == "features" or returns_embeddings(artifact.output_names)):
                out.label_filename = labels
    on_gpu = backend in (ServingBackend.onnxruntime, ServingBackend.tensorrt)
    config.instance_group.add(
        count=instances, kind=pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    )

    if backend.runtime:
        config.backend = "python"
        _string_parameters(
            config,
            {
                "runtime": backend.runtime,
                "model_filename": model_filename,
                "intra_op_threads": str(intra_op_threads),
                # OpenVINO computes in the artifact's precision only when told (it picks BF16 on CPUs that have it).
                "precision": artifact.precision,
            },
        )
    elif backend is ServingBackend.onnxruntime:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = model_filename
        if tensorrt_accelerator:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters["precision_mode"] = "FP16"
            accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    elif backend is ServingBackend.openvino:
        config.backend = "openvino"
        config.default_model_filename = model_filename
    elif backend is ServingBackend.tensorrt:
        config.platform = "tensorrt_plan"
        if cc_model_filenames:
            for cc, filename in sorted(cc_model_filenames.items()):
                config.cc_model_filenames[cc] = filename
        else:
            config.default_model_filename = model_filename
    # Clients that only hold the served name can still preprocess images the way the model expects.
    _string_parameters(
        config,
        {"vitexport_model": artifact.model, "vitexport_preprocess": json.dumps(artifact.preprocess.to_dict())},
    )
    if artifact.task == "detection":
        _string_parameters(config, {TASK: "detection"})
    return config


def _detector_io(config: pb.ModelConfig, artifact: ModelArtifact, batch_prefix: list[int]) -> None:
    """A DETR export's second input and two outputs: pixel_mask INT64 (S, S) beside pixel_values; logits
    (Q, classes + 1) and pred_boxes (Q, 4). Q is -1: the sidecar does not record the number of queries, and every
    backend accepts a variable dimension where the graph has a fixed one. No label_filename: Triton's classification
    extension ranks a whole output tensor, which for (Q, classes + 1) means nothing; the ensemble labels boxes."""
    pb = model_config_pb2()
    S = artifact.preprocess.input_size
    config.input.add(name=artifact.mask_name, data_type=pb.TYPE_INT64, dims=[*batch_prefix, S, S])
    if len(artifact.output_names) != 2:
        raise ServingError(f"a detector returns logits and boxes; {artifact.path.name} has {artifact.output_names}")
    logits, boxes = artifact.output_names
    config.output.add(name=logits, data_type=pb.TYPE_FP32, dims=[*batch_prefix, -1, artifact.num_classes + 1])
    config.output.add(name=boxes, data_type=pb.TYPE_FP32, dims=[*batch_prefix, -1, 4])


def is_detector(config: pb.ModelConfig) -> bool:
    """Whether a served model (a detector, or its `_image` ensemble) detects objects: its config says so."""
    return parameter(config, TASK) == "detection"


def tensorrt_batching(profile: dict[str, int], requested: Batching | None = None) -> Batching:
    """Batching for an engine: the profile's max is the largest batch it accepts, its opt (and max) are preferred."""
    lo, opt, hi = int(profile["min"]), int(profile["opt"]), int(profile["max"])
    if lo > 1:
        # Triton may hand the engine batches of 1: an engine that cannot run them would fail requests at random.
        raise ServingError(f"the engine's profile starts at batch {lo}; Triton needs engines that accept batch 1")
    if requested is not None and requested.max_batch_size > hi:
        raise ServingError(f"max batch size {requested.max_batch_size} exceeds the engine profile's max {hi}")
    delay = requested.max_queue_delay_us if requested else Batching.max_queue_delay_us
    return Batching(max_batch_size=hi, preferred_batch_sizes=tuple(sorted({opt, hi})), max_queue_delay_us=delay)


def preprocess_config(
    name: str, preprocess: PreprocessConfig, *, max_batch_size: int, instances: int = 1
) -> pb.ModelConfig:
    """Encoded image bytes -> pixel_values, by vitexport.preprocess.preprocess_image in a Python-backend model; for
    a detector, by preprocess_detection -> pixel_values, pixel_mask and image_size (the original height, width)."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    S = preprocess.input_size
    config.input.add(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    config.output.add(name=PIXELS, data_type=pb.TYPE_FP32, dims=[3, S, S])
    if preprocess.detection:  # vitexport.preprocess.preprocess_detection: the canvas, its mask, the original size
        config.output.add(name=MASK, data_type=pb.TYPE_INT64, dims=[S, S])
        config.output.add(name=IMAGE_SIZE, data_type=pb.TYPE_INT64, dims=[2])
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, Batching(max_batch_size=max_batch_size, max_queue_delay_us=0))
    _string_parameters(config, {"preprocess": json.dumps(preprocess.to_dict())})
    return config


def postprocess_config(
    name: str, *, num_classes: int, top_k: int, max_batch_size: int, logits: str = "logits"
) -> pb.ModelConfig:
    """Logits -> the top-k labels, softmax scores and class indices, in a Python-backend model."""
    if not 1 <= top_k <= num_classes:
        raise ServingError(f"top-k must be within 1..{num_classes}, got {top_k}")
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name=logits, data_type=pb.TYPE_FP32, dims=[num_classes])
    config.output.add(name=TOP_K_LABELS, data_type=pb.TYPE_STRING, dims=[top_k])
    config.output.add(name=TOP_K_SCORES, data_type=pb.TYPE_FP32, dims=[top_k])
    config.output.add(name=TOP_K_INDICES, data_type=pb.TYPE_INT64, dims=[top_k])
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, Batching(max_batch_size=max_batch_size, max_queue_delay_us=0))
    _string_parameters(config, {"top_k": str(top_k), "labels": LABELS_FILE, "logits": logits})
    return config


def detection_postprocess_config(
    name: str,
    *,
    num_classes: int,
    max_batch_size: int,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_DETECTIONS,
    logits: str = "logits",
    boxes: str = "pred_boxes",
) -> pb.ModelConfig:
    """logits, pred_boxes and the original size -> the detections above `threshold`, at most `top_k`, by
    vitexport.postprocess.detections in a Python-backend model; a request's `threshold` and `top_k` parameters
    override these defaults.

    Images hold different numbers of detections, and a batch is one tensor: the detection outputs have a variable
    dimension (-1). Each response is as wide as the most detections of any image in its request (Triton 2.51 takes
    variable output dims, zero wide too, through the ensemble and its dynamic batcher, whose requests each get
    their own response), the other images' rows padded (score 0, class -1, label ""), and `count` says how many
    of each image's rows are real. A fixed width (top_k rows always) would send 100 rows where DETR finds 3."""
    try:
        check_settings(threshold, top_k)
    except ValueError as e:
        raise ServingError(str(e)) from None
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.input.add(name=logits, data_type=pb.TYPE_FP32, dims=[-1, num_classes + 1])
    config.input.add(name=boxes, data_type=pb.TYPE_FP32, dims=[-1, 4])
    config.input.add(name=IMAGE_SIZE, data_type=pb.TYPE_INT64, dims=[2])
    _detection_outputs(config)
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, Batching(max_batch_size=max_batch_size, max_queue_delay_us=0))
    values = {"threshold": repr(float(threshold)), "top_k": str(top_k), "labels": LABELS_FILE}
    _string_parameters(config, values | {"logits": logits, "boxes": boxes})
    return config


def _detection_outputs(config: pb.ModelConfig) -> None:
    pb = model_config_pb2()
    config.output.add(name=BOXES, data_type=pb.TYPE_FP32, dims=[-1, 4])
    config.output.add(name=SCORES, data_type=pb.TYPE_FP32, dims=[-1])
    config.output.add(name=LABELS, data_type=pb.TYPE_STRING, dims=[-1])
    config.output.add(name=CLASSES, data_type=pb.TYPE_INT64, dims=[-1])
    config.output.add(name=COUNT, data_type=pb.TYPE_INT64, dims=[1])


def detection_ensemble_config(
    name: str, *, detector: pb.ModelConfig, preprocess: pb.ModelConfig, postprocess: pb.ModelConfig
) -> pb.ModelConfig:
    """image bytes -> preprocess (canvas, mask, size) -> detector -> postprocess -> boxes, scores, labels, classes
    and count, as one model a client calls once."""
    pb = model_config_pb2()
    pixels, mask = (i.name for i in detector.input)
    logits = postprocess.parameters["logits"].string_value
    boxes = postprocess.parameters["boxes"].string_value
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=detector.max_batch_size)
    config.input.add(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    _detection_outputs(config)
    steps = config.ensemble_scheduling.step
    step = steps.add(model_name=preprocess.name, model_version=-1)  # -1: the latest version of each step
    step.input_map[IMAGE_INPUT] = IMAGE_INPUT
    for output, tensor in ((PIXELS, "_pixels"), (MASK, "_mask"), (IMAGE_SIZE, "_size")):
        step.output_map[output] = tensor
    step = steps.add(model_name=detector.name, model_version=-1)
    step.input_map[pixels], step.input_map[mask] = "_pixels", "_mask"
    step.output_map[logits], step.output_map[boxes] = "_logits", "_boxes"
    step = steps.add(model_name=postprocess.name, model_version=-1)
    step.input_map[logits], step.input_map[boxes], step.input_map[IMAGE_SIZE] = "_logits", "_boxes", "_size"
    for output in DETECTION_OUTPUTS:
        step.output_map[output] = output
    _string_parameters(
        config, {"vitexport_model": detector.parameters["vitexport_model"].string_value, TASK: "detection"}
    )
    return config


def ensemble_config(
    name: str,
    *,
    classifier: pb.ModelConfig,
    preprocess: pb.ModelConfig,
    postprocess: pb.ModelConfig | None,
) -> pb.ModelConfig:
    """image bytes -> preprocess -> classifier -> postprocess (top-k), as one model a client calls once.

    Without a postprocess (a model returning embeddings), the ensemble returns the model's outputs as they are:
    image bytes -> preprocess -> model -> embeddings (D,)."""
    pb = model_config_pb2()
    pixels = classifier.input[0].name
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=classifier.max_batch_size)
    config.input.add(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    steps = config.ensemble_scheduling.step
    # Version -1: each step uses the latest version, so a new classifier version takes over the ensemble too.
    step = steps.add(model_name=preprocess.name, model_version=-1)
    step.input_map[IMAGE_INPUT] = IMAGE_INPUT
    step.output_map[PIXELS] = "_pixels"
    step = steps.add(model_name=classifier.name, model_version=-1)
    step.input_map[pixels] = "_pixels"
    if postprocess is None:
        # The ensemble of an embedding model answers `embeddings`, whatever the model calls its output (an imported
        # model keeps its own names), so that clients recognise it.
        (output,) = classifier.output
        config.output.add(name=EMBEDDINGS, data_type=output.data_type, dims=output.dims)
        step.output_map[output.name] = EMBEDDINGS
    else:
        logits = postprocess.parameters["logits"].string_value
        top_k = int(postprocess.parameters["top_k"].string_value)
        config.output.add(name=TOP_K_LABELS, data_type=pb.TYPE_STRING, dims=[top_k])
        config.output.add(name=TOP_K_SCORES, data_type=pb.TYPE_FP32, dims=[top_k])
        config.output.add(name=TOP_K_INDICES, data_type=pb.TYPE_INT64, dims=[top_k])
        step.output_map[logits] = "_logits"
        step = steps.add(model_name=postprocess.name, model_version=-1)
        step.input_map[logits] = "_logits"
        for output in (TOP_K_LABELS, TOP_K_SCORES, TOP_K_INDICES):
            step.output_map[output] = output
    _string_parameters(config, {"vitexport_model": classifier.parameters["vitexport_model"].string_value})
    return config


def render(config: pb.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse(text: str, source: str = "config.pbtxt") -> pb.ModelConfig:
    """Parse config.pbtxt text the way Triton does; unknown fields or bad values raise ServingError."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as e:
        raise ServingError(f"{source} is not a valid Triton model config: {e}") from None


def read_config(model_dir: Path) -> pb.ModelConfig:
    path = model_dir / "config.pbtxt"
    try:
        return parse(path.read_text(), str(path))
    except OSError as e:
        raise ServingError(f"cannot read {path}: {e.strerror or e}") from None


def parameter(config: pb.ModelConfig, key: str, default: str | None = None) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else default
