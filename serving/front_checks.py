"""What the front (front.py) checks in an inference request before Triton sees it, protocol-neutral.

Triton 2.51 trusts parts of a request it should not: a shape of [2147483648, 3, 64, 64] with one data value kills it
(a divide trap in its size arithmetic), and the classification extension asked on a BYTES output kills it too, over
HTTP and gRPC alike. So every inference request is held against the model's own config first: each input's
datatype and shape (dims from the config, a bounded batch and element count), the data it carries equal to what
its shape says, output parameters only where Triton handles them, request parameters of known names and types.
A refusal is `Refused`: one line naming the limit, answered as HTTP 400 or gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitexport.serving.config import TASK
from vitexport.tasks import TASKS

# Triton's classification extension: the output parameter asking for the top classes with their labels.
CLASSIFICATION_EXTENSION = "classification"
# Every task's request parameters: a model takes the ones its task does, or none.
TASK_PARAMETERS = frozenset(p for task in TASKS.values() for p in task.request_parameters)

# Bytes per element of each fixed-size datatype (the KServe v2 names); BYTES elements are length-prefixed strings.
ELEMENT_SIZE = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}  # fmt: skip
# Where Triton computes the classification extension: numbers. On BYTES it dies; BOOL and BF16 it does not handle.
CLASSIFIABLE = frozenset(ELEMENT_SIZE) - {"BOOL", "BF16"}
MAX_TIMEOUT_US = 3_600_000_000  # an hour: Triton turns the microseconds into int64 nanoseconds, which overflow
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


class Refused(Exception):
    """A request the front does not pass on; str(): the one line for the client; `status`: the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The front's own bounds, whatever the model: the bytes of a request body and the elements of all its inputs."""

    max_request_bytes: int = 64 * 1024 * 1024
    max_elements: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    datatype: str  # KServe name: FP32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1: any size


@dataclass(frozen=True)
class ModelSpec:
    """What the checks need of a model's config (Triton's JSON form of it)."""

    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    optional: frozenset[str] = frozenset()
    sequence: bool = False
    priority_levels: int = 0
    # The task's request parameters it takes (a detector's threshold and top_k: detections_model.py reads them)
    request_parameters: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, doc: Mapping[str, Any]) -> ModelSpec:
        def specs(key: str) -> dict[str, TensorSpec]:
            return {
                str(t["name"]): TensorSpec(_datatype(str(t.get("data_type", ""))), tuple(int(d) for d in t["dims"]))
                for t in doc.get(key, [])
            }

        batching = doc.get("dynamic_batching") or {}
        return cls(
            max_batch_size=int(doc.get("max_batch_size", 0)),
            inputs=specs("input"),
            outputs=specs("output"),
            optional=frozenset(str(t["name"]) for t in doc.get("input", []) if t.get("optional")),
            sequence="sequence_batching" in doc,
            priority_levels=int(batching.get("priority_levels", 0)),
            request_parameters=_request_parameters(doc),
        )


def _request_parameters(doc: Mapping[str, Any]) -> frozenset[str]:
    """What a request may set: an ensemble forwards its task's request parameters; a post-processing model takes them
    when its config holds a default for each of them."""
    task_name = _string(doc, TASK)
    if doc.get("platform") == "ensemble" and task_name in TASKS:
        return TASKS[task_name].request_parameters
    return frozenset(
        p
        for task in TASKS.values()
        if task.request_parameters and all(_string(doc, name) is not None for name in task.request_parameters)
        for p in task.request_parameters
    )


def _string(doc: Mapping[str, Any], name: str) -> str | None:
    """A config parameter's value (vitexport's, in `parameters`), or None."""
    value = (doc.get("parameters") or {}).get(name)
    return str(value.get("string_value")) if isinstance(value, dict) else None


def _datatype(config_type: str) -> str:
    """TYPE_FP32 -> FP32; TYPE_STRING -> BYTES (the config's and the protocol's names differ)."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


@dataclass(frozen=True)
class InputTensor:
    """One input of a request: its declared shape and what it carries (a count of values, or raw bytes)."""

    name: str
    datatype: object
    shape: Sequence[object]
    values: int | None = None  # JSON data or gRPC typed contents: how many values
    raw: bytes | memoryview | None = None  # binary data: the bytes
    parameters: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    parameters: Mapping[str, object] = field(default_factory=dict)


def check_request(
    spec: ModelSpec,
    inputs: Sequence[InputTensor],
    outputs: Sequence[OutputTensor],
    parameters: Mapping[str, object],
    limits: Limits,
    *,
    input_parameters: frozenset[str] = frozenset(),
    output_parameters: frozenset[str] = frozenset({CLASSIFICATION_EXTENSION}),
) -> None:
    """Raise Refused unless Triton can take the request safely. `input_parameters` and `output_parameters`: the
    names each protocol allows beside (HTTP's binary_data_size, binary_data)."""
    check_parameters(spec, parameters)
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise Refused("an input is given twice")
    missing = set(spec.inputs) - spec.optional - set(names)
    if missing:
        raise Refused(f"missing input {sorted(missing)[0]!r} (the model takes {', '.join(spec.inputs)})")
    elements = 0
    batch: int | None = None
    for tensor in inputs:
        count, first = check_input(spec, tensor, limits, input_parameters)
        elements += count
        if elements > limits.max_elements:
            raise Refused(f"the inputs hold over {limits.max_elements} elements, the limit per request")
        if batch is not None and first != batch:
            raise Refused(f"the inputs disagree on the batch size ({batch} and {first})")
        batch = first if spec.max_batch_size > 0 else None
    seen: set[str] = set()
    for output in outputs:
        if output.name in seen:
            raise Refused(f"output {output.name!r} is asked twice")
        seen.add(output.name)
        check_output(spec, output, output_parameters)


def check_input(
    spec: ModelSpec, tensor: InputTensor, limits: Limits, allowed: frozenset[str]
) -> tuple[int, int | None]:
    """The input's element count and batch size, or Refused."""
    config = spec.inputs.get(tensor.name)
    if config is None:
        raise Refused(f"unknown input {tensor.name!r} (the model takes {', '.join(spec.inputs)})")
    if tensor.datatype != config.datatype:
        raise Refused(f"input {tensor.name!r} is {config.datatype}, not {str(tensor.datatype)[:20]!r}")
    for name in tensor.parameters:
        if name not in allowed:
            raise Refused(f"input {tensor.name!r}: parameter {name[:40]!r} is not accepted here")
    count = check_shape(spec, tensor.name, tensor.shape, config.dims, limits)
    given = _values_given(tensor, config.datatype, count)
    if given != count:
        raise Refused(f"input {tensor.name!r} has shape {list(tensor.shape)} ({count} values) but carries {given}")
    return count, (int(tensor.shape[0]) if spec.max_batch_size > 0 else None)  # type: ignore[call-overload]


def check_shape(spec: ModelSpec, name: str, shape: Sequence[object], dims: tuple[int, ...], limits: Limits) -> int:
    """The shape's element count: every dim an integer >= 1, fixed dims as configured, the batch within
    max_batch_size, the count within the per-request limit."""
    batched = spec.max_batch_size > 0
    expected = (-1, *dims) if batched else dims
    if len(shape) != len(expected):
        want = f"{len(dims)} dims" + (" after the batch" if batched else "")
        raise Refused(f"input {name!r} has {len(shape)} dims; the model takes {want} ({list(dims)})")
    count = 1
    for i, (dim, want_dim) in enumerate(zip(shape, expected, strict=True)):
        if type(dim) is not int or dim < 1:
            raise Refused(f"input {name!r}: shape dim {i} must be an integer >= 1, not {str(dim)[:24]}")
        if want_dim != -1 and dim != want_dim:
            raise Refused(f"input {name!r}: shape dim {i} must be {want_dim}, not {dim}")
        count *= dim
        if count > limits.max_elements:  # Python ints do not overflow; stop before they grow large anyway
            raise Refused(f"input {name!r}: shape {list(shape)} is over {limits.max_elements} elements, the limit")
    if batched and shape[0] > spec.max_batch_size:  # type: ignore[operator]
        raise Refused(f"input {name!r}: batch {shape[0]} is over the model's max_batch_size {spec.max_batch_size}")
    return count


def _values_given(tensor: InputTensor, datatype: str, expected: int) -> int | str:
    """How many values the input carries (a description, when its bytes cannot be values of the datatype)."""
    if tensor.raw is None:
        if tensor.values is None:
            raise Refused(f"input {tensor.name!r} carries no data")
        return tensor.values
    if datatype == "BYTES":
        strings = count_strings(tensor.raw, expected + 1)
        return strings if strings is not None else "malformed length-prefixed strings"
    size = ELEMENT_SIZE[datatype]
    if len(tensor.raw) % size:
        return f"{len(tensor.raw)} bytes, not a whole number of {datatype} values"
    return len(tensor.raw) // size


def count_strings(raw: bytes | memoryview, limit: int) -> int | None:
    """The number of 4-byte-length-prefixed strings filling `raw` exactly (BYTES binary data), None if malformed;
    counted up to `limit` (more is no longer the count asked, and bytes of tiny strings are many to walk)."""
    view, offset, count = memoryview(raw), 0, 0
    while offset < len(view) and count < limit:
        if offset + 4 > len(view):
            return None
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        count += 1
    return count if offset == len(view) or count == limit else None


def check_output(spec: ModelSpec, output: OutputTensor, allowed: frozenset[str]) -> None:
    config = spec.outputs.get(output.name)
    if config is None:
        raise Refused(f"unknown output {output.name[:64]!r} (the model answers {', '.join(spec.outputs)})")
    for name, value in output.parameters.items():
        if name not in allowed:
            raise Refused(f"output {output.name!r}: parameter {name[:40]!r} is not accepted here")
        if name == "binary_data" and type(value) is not bool:
            raise Refused(f"output {output.name!r}: binary_data must be true or false")
        if name == CLASSIFICATION_EXTENSION:
            _check_classification(output.name, value, config)


def _check_classification(name: str, value: object, config: TensorSpec) -> None:
    if config.datatype not in CLASSIFIABLE:
        raise Refused(f"output {name!r} is {config.datatype}: classification is only for numeric outputs")
    # A variable dim can be empty in the answer (a detector that found nothing): Triton divides by it and dies.
    if any(d < 1 for d in config.dims):
        raise Refused(f"output {name!r} has a variable shape {list(config.dims)}: classification needs a fixed width")
    width = 1
    for d in config.dims:
        width *= d
    if type(value) is not int or not 1 <= value <= width:
        raise Refused(f"output {name!r}: classification must be an integer 1..{width}, not {str(value)[:24]}")


def check_parameters(spec: ModelSpec, parameters: Mapping[str, object]) -> None:
    """The request's own parameters: known names, each of its type and range."""
    for name, value in parameters.items():
        if name in SEQUENCE_PARAMETERS and not spec.sequence:
            raise Refused(f"{name}: the model is not a sequence model")
        if name in TASK_PARAMETERS and name not in spec.request_parameters:
            raise Refused(f"parameter {name!r} is a task's setting this model does not take")
        expected = PARAMETERS.get(name)
        if expected is None:
            raise Refused(f"parameter {name[:40]!r} is not accepted (known: {', '.join(PARAMETERS)})")
        kinds, low, high = expected
        if name == "priority":
            high = spec.priority_levels  # 0: the model has no priority levels, so only the default
        if type(value) not in kinds or (low is not None and not low <= value <= high):  # type: ignore[operator]
            span = f" {low}..{high}" if low is not None else ""
            raise Refused(
                f"parameter {name} must be {' or '.join(k.__name__ for k in kinds)}{span}, not {str(value)[:24]}"
            )


# Request parameters: the accepted types and range of each. threshold and top_k are the detector's to check
# (detections_model.py answers a wrong one in one line): any scalar passes here.
PARAMETERS: dict[str, tuple[tuple[type, ...], int | None, int]] = {
    "priority": ((int,), 0, 0),
    "timeout": ((int,), 0, MAX_TIMEOUT_US),
    "binary_data_output": ((bool,), None, 0),
    "triton_enable_empty_final_response": ((bool,), None, 0),
    "sequence_id": ((int, str), None, 0),
    "sequence_start": ((bool,), None, 0),
    "sequence_end": ((bool,), None, 0),
    "threshold": ((bool, int, float, str), None, 0),
    "top_k": ((bool, int, float, str), None, 0),
}
