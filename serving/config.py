"""Triton model configurations built as data through Triton's own `ModelConfig` protobuf and rendered with
`google.protobuf.text_format`, so a misspelt field fails here rather than when the server loads the model."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ServingError, VitExportError
from vitexport.preprocess import PreprocessConfig, ServedPreprocessing

# Batching lives in serving/batching.py; its names stay importable from here, where the configs are built.
from vitexport.serving.batching import MAX_BATCH_SIZE as MAX_BATCH_SIZE
from vitexport.serving.batching import Batching as Batching
from vitexport.serving.batching import batching_from_options as batching_from_options
from vitexport.serving.batching import tensorrt_batching as tensorrt_batching
from vitexport.tasks import CLASSIFICATION, FEATURES, Task, TensorSpec, get_task, task_of
from vitexport.tasks.base import BYTES, FP32, IMAGE_INPUT, INT64
from vitexport.tasks.classification import EMBEDDINGS

# The tensor names are the tasks' own; re-exported for the callers that read them here (the soak).
from vitexport.tasks.classification import PROBABILITIES as PROBABILITIES
from vitexport.variants import ServingBackend

LABELS_FILE = "labels.txt"
TASK = "vitexport_task"  # the parameter that says what a model (or ensemble) does: clients read it, not names
MAX_INSTANCES = 64  # model instances: each a stub process holding its own copy of the model
# Triton's config data types of the tasks' dtype names (BYTES is TYPE_STRING in a config).
DATA_TYPES = {FP32: "TYPE_FP32", INT64: "TYPE_INT64", BYTES: "TYPE_STRING"}

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


def _string_parameters(config: pb.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _dynamic_batching(config: pb.ModelConfig, batching: Batching) -> None:
    if batching.max_batch_size > 0:
        config.dynamic_batching.preferred_batch_size.extend(sorted(set(batching.preferred_batch_sizes)))
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us


def task_of_config(config: pb.ModelConfig) -> Task:
    """What a served model (or its `_image` ensemble) does: its config's `vitexport_task`. Configs written before
    every model carried one (classifiers and embedding models did not) are told apart by their outputs."""
    name = parameter(config, TASK)
    if name is None:
        return FEATURES if [o.name for o in config.output] == [EMBEDDINGS] else CLASSIFICATION
    try:
        return get_task(name)
    except VitExportError as e:
        raise ServingError(f"{config.name}: {e}") from None


def settings_of(task: Task) -> frozenset[str]:
    """The settings a task's post-processing takes (top_k; a detector's threshold too), none for a task without."""
    return frozenset(task.check_settings({}, 1))


def _add_tensors(
    field: Any, specs: Sequence[TensorSpec], *, batch: Sequence[int] = (), labels: str | None = None
) -> None:
    """Add the specs as a config's inputs or outputs; `batch` prefixes the dims of a fixed-batch model, and `labels`
    labels the outputs that Triton's classification extension ranks."""
    pb = model_config_pb2()
    for spec in specs:
        tensor = field.add(name=spec.name, data_type=getattr(pb, DATA_TYPES[spec.dtype]), dims=[*batch, *spec.dims])
        if labels and spec.labelled:
            tensor.label_filename = labels
        # Triton allows a format on 3 dims only: a fixed-batch model's dims carry the batch too, so it goes without.
        if spec.format and not batch:
            tensor.format = pb.ModelInput.Format.Value(spec.format)


def tensor_specs(tensors: Iterable[Any]) -> tuple[TensorSpec, ...]:
    """A config's inputs or outputs as the tasks describe tensors (the dims as the config has them)."""
    pb = model_config_pb2()
    dtypes = {getattr(pb, v): k for k, v in DATA_TYPES.items()}
    return tuple(
        TensorSpec(
            t.name,
            dtypes[t.data_type],
            tuple(t.dims),
            bool(getattr(t, "label_filename", "")),
            pb.ModelInput.Format.Name(t.format) if getattr(t, "format", 0) else None,
        )
        for t in tensors
    )


def model_specs(
    artifact: ModelArtifact, task: Task | None = None
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The served model's (inputs, outputs), one item's dims, as its task defines them for this artifact."""
    task = task or task_of(artifact)
    try:
        return task.model_io(
            input_name=artifact.input_name,
            output_names=artifact.output_names,
            size=artifact.preprocess.input_size,
            num_classes=artifact.num_classes,
        )
    except VitExportError as e:
        raise ServingError(f"{artifact.path.name}: {e}") from None


def model_config(
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
    """The model, whatever its task, run by `backend`: the inputs and outputs its task declares (`Task.model_io`),
    the labelled ones (a classifier's logits) with `labels` for Triton's classification extension."""
    _check_servable(artifact, backend, instances, tensorrt_accelerator)
    pb = model_config_pb2()
    task = task_of(artifact)
    config = pb.ModelConfig(name=name)
    batch: list[int] = []
    if artifact.batch_size is not None:
        # A fixed-batch graph accepts exactly that batch, so Triton must not batch: the batch is part of the dims.
        config.max_batch_size, batch = 0, [artifact.batch_size]
    else:
        config.max_batch_size = batching.max_batch_size
        _dynamic_batching(config, batching)
    inputs, outputs = model_specs(artifact, task)
    _add_tensors(config.input, inputs, batch=batch)
    _add_tensors(config.output, outputs, batch=batch, labels=labels)
    _response_cache(config, task)
    on_gpu = backend in (ServingBackend.onnxruntime, ServingBackend.tensorrt)
    config.instance_group.add(
        count=instances, kind=pb.ModelInstanceGroup.KIND_GPU if on_gpu else pb.ModelInstanceGroup.KIND_CPU
    )
    _backend(config, artifact, backend, model_filename, cc_model_filenames, tensorrt_accelerator, intra_op_threads)
    # Clients that only hold the served name can still preprocess images the way the model expects.
    _string_parameters(
        config,
        {
            "vitexport_model": artifact.model,
            "vitexport_preprocess": json.dumps(artifact.preprocess.to_dict()),
            TASK: task.name,
        },
    )
    return config


def _response_cache(config: pb.ModelConfig, task: Task) -> None:
    """Let Triton's response cache answer the model when the server has one (`serve --response-cache MB`) and the
    answer depends on the inputs alone. Triton 2.51 keys an answer on the inputs only: a model with several outputs
    would answer a request for some of them with the outputs another request asked for (tested), and one whose
    requests carry parameters (a detector's threshold) with another's answer. So the cache holds the models of one
    output: a classifier's or embedding model's, their preprocessing, a classifier's post-processing and image
    ensemble (its labelled probabilities: the classification extension ranks a cached answer as any other)."""
    if len(config.output) == 1 and not task.request_parameters:
        config.response_cache.enable = True


def _check_servable(artifact: ModelArtifact, backend: ServingBackend, instances: int, accelerator: bool) -> None:
    if not 1 <= instances <= MAX_INSTANCES:  # each is a process with its own copy of the model
        raise ServingError(f"instance count must be 1..{MAX_INSTANCES} (one process each), got {instances}")
    if artifact.format not in backend.formats:
        raise ServingError(
            f"backend {backend.value} serves {' or '.join(backend.formats)} models, not {artifact.format}"
        )
    if artifact.io_type != "fp32":
        # The preprocessing model, the post-processing and the client all exchange FP32 pixels and outputs; a config
        # declaring FP32 for an FP16-I/O graph would have every request fail at run time instead.
        raise ServingError(
            f"{artifact.path.name} takes and returns {artifact.io_type} tensors; served models exchange fp32: "
            "optimize it with --io-type fp32 (the default)"
        )
    if accelerator and backend is not ServingBackend.onnxruntime:
        raise ServingError("the TensorRT execution accelerator is an option of the onnxruntime backend only")


def _backend(
    config: pb.ModelConfig,
    artifact: ModelArtifact,
    backend: ServingBackend,
    model_filename: str,
    cc_model_filenames: dict[str, str] | None,
    tensorrt_accelerator: bool,
    intra_op_threads: int,
) -> None:
    """How Triton runs the model: our Python-backend runner, or one of Triton's own backends."""
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


def _python_step(name: str, max_batch_size: int, instances: int = 1) -> pb.ModelConfig:
    """A Python-backend step of an image ensemble, on the CPU, batching what arrives together without waiting."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, Batching(max_batch_size=max_batch_size, max_queue_delay_us=0))
    return config


def preprocess_config(
    name: str,
    preprocess: PreprocessConfig,
    task: Task,
    *,
    max_batch_size: int,
    instances: int = 1,
    served: ServedPreprocessing | None = None,
) -> pb.ModelConfig:
    """Encoded image bytes -> what the task's model takes (`Task.preprocess_outputs`: pixel_values; a detector's
    canvas, its mask and the original height and width), by vitexport.preprocess in a Python-backend model:
    `served` says whether by the fast path or the exact one (and the gate's figures that chose it; default exact).
    `instances`: decoding is one CPU core's work per image, so several instances decode several requests at once."""
    config = _python_step(name, max_batch_size, instances)
    _add_tensors(config.input, [TensorSpec(IMAGE_INPUT, BYTES, (1,))])
    _add_tensors(config.output, task.preprocess_outputs(preprocess.input_size))
    _response_cache(config, task)
    _string_parameters(config, {"preprocess": json.dumps(preprocess.to_dict())})
    _string_parameters(config, (served or ServedPreprocessing()).to_parameters())
    from vitexport.preprocess import RequestLimits  # the bounds of a request, checked before decoding: config.pbtxt's

    _string_parameters(config, RequestLimits().to_parameters())
    return config


def postprocess_config(
    name: str,
    task: Task,
    model_outputs: Sequence[TensorSpec],
    settings: Mapping[str, object],
    *,
    num_classes: int,
    max_batch_size: int,
) -> pb.ModelConfig:
    """The model's outputs (and what the preprocessing kept aside) -> the task's answer (`Task.ensemble_outputs`:
    a classifier's labelled probabilities; a detector's boxes, scores, labels, classes, count), in the Python-backend
    model `Task.postprocess`. `settings` (top_k: a classifier's default k, which clients ask Triton's classification
    extension for; a detector's top_k and threshold, which requests may override) are checked by the task and
    written as parameters, with the labels file and the names of the inputs the backend reads (`inputs`, a JSON list
    in the task's order). A detector's answers are as wide as the most detections of an image in the
    request (-1 dims, which Triton 2.51 passes through ensembles and dynamic batching), `count` the real ones."""
    try:
        parameters = task.check_settings(settings, num_classes)
    except VitExportError as e:
        raise ServingError(str(e)) from None
    inputs = task.postprocess_inputs(model_outputs)
    config = _python_step(name, max_batch_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, task.ensemble_outputs(model_outputs, parameters), labels=LABELS_FILE)
    files = {"labels": LABELS_FILE} if task.has_labels else {}
    _string_parameters(config, parameters | files | {"inputs": json.dumps([i.name for i in inputs])})
    return config


def ensemble_config(
    name: str, task: Task, model: pb.ModelConfig, preprocess: pb.ModelConfig, postprocess: pb.ModelConfig | None
) -> pb.ModelConfig:
    """image bytes -> preprocess -> model -> postprocess, as one model a client calls once, wired from the configs:
    the preprocessing's outputs feed the model's inputs in order (an imported model names its pixels its own way),
    the rest of them (a detector's image size) and the model's outputs feed the post-processing's inputs by name,
    and the post-processing's outputs are the ensemble's, its settings (`top_k`...) the ensemble's parameters too, for
    clients to read the defaults. Without a post-processing (an embedding model), the ensemble answers the model's
    outputs under the task's names (`Task.ensemble_outputs`: `embeddings`)."""
    pb = model_config_pb2()
    if len(model.input) > len(preprocess.output):
        raise ServingError(f"{preprocess.name} makes {len(preprocess.output)} tensors; {model.name} takes more")
    config = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=model.max_batch_size)
    _add_tensors(config.input, [TensorSpec(IMAGE_INPUT, BYTES, (1,))])
    steps = config.ensemble_scheduling.step
    # Version -1: each step uses the latest version, so a new model version takes over the ensemble too.
    pre = steps.add(model_name=preprocess.name, model_version=-1)
    pre.input_map[IMAGE_INPUT] = IMAGE_INPUT
    for tensor in preprocess.output:
        pre.output_map[tensor.name] = f"_{tensor.name}"
    step = steps.add(model_name=model.name, model_version=-1)
    for model_input, made in zip(model.input, preprocess.output, strict=False):  # the side outputs are left over
        step.input_map[model_input.name] = f"_{made.name}"
    if postprocess is None:
        outputs = task.ensemble_outputs(tensor_specs(model.output), {})
        for model_output, answer in zip(model.output, outputs, strict=True):
            step.output_map[model_output.name] = answer.name
    else:
        outputs = tensor_specs(postprocess.output)
        made = {t.name for t in model.output}
        post = steps.add(model_name=postprocess.name, model_version=-1)
        for tensor in postprocess.input:
            if tensor.name in made:
                step.output_map[tensor.name] = f"_{tensor.name}"
            post.input_map[tensor.name] = f"_{tensor.name}"
        for tensor in postprocess.output:
            post.output_map[tensor.name] = tensor.name
    _add_tensors(config.output, outputs, labels=LABELS_FILE)
    _response_cache(config, task)
    _string_parameters(config, {"vitexport_model": model.parameters["vitexport_model"].string_value, TASK: task.name})
    if postprocess is not None:
        _string_parameters(
            config, {k: v.string_value for k, v in postprocess.parameters.items() if k in settings_of(task)}
        )
    # What a client reads before sending (serving/sending.py): the preprocessing, and whether the gate let a large
    # photo be sent resized.
    sending = {"vitexport_preprocess": preprocess.parameters["preprocess"].string_value}
    _string_parameters(config, sending | {"send": parameter(preprocess, "send", "original") or "original"})
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
