"""Running a deserialized engine (needs TensorRT and a GPU): inference with the name-based tensor API (TensorRT
10/11), and the inspector's layer information with the input shape set."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vitexport.export.tensorrt.settings import EngineBuildError


def layer_information(trt: Any, engine: Any, input_name: str, opt_shape: tuple[int, ...]) -> str:
    """The inspector's JSON for the whole engine, with shapes set so that tensor formats are reported."""
    context = _execution_context(engine)
    _set_input_shape(context, input_name, opt_shape)
    inspector = engine.create_engine_inspector()
    # `execution_context` in TensorRT 10/11; `context` in older bindings.
    attribute = "execution_context" if hasattr(inspector, "execution_context") else "context"
    setattr(inspector, attribute, context)
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.dumps(json.loads(info), indent=1)  # normalised, so the file diffs well between builds


def _execution_context(engine: Any) -> Any:
    context = engine.create_execution_context()
    if context is None:  # e.g. not enough device memory for the engine's activations
        raise EngineBuildError("TensorRT could not create an execution context; its log above says why")
    return context


def _set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    # False when the shape lies outside the engine's optimization profile (or the name is not an input).
    if not context.set_input_shape(name, tuple(shape)):
        dims = "x".join(map(str, shape))
        raise EngineBuildError(f"TensorRT refused input shape {dims} for {name!r}: outside the engine's profile?")


def run_engine(trt: Any, engine: Any, device: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference with the name-based tensor API (TensorRT 10/11): set shapes and addresses, enqueueV3."""
    return EngineRunner(trt, engine, device)(inputs)


class EngineRunner:
    """Inference on one engine, called many times (the benchmark's TensorRT runner): the execution context and the
    device buffers are kept between calls, and a buffer is re-allocated only when a larger batch needs more room, so
    a call costs the copies and the kernels, not a context and allocations."""

    def __init__(self, trt: Any, engine: Any, device: Any):
        self.trt, self.engine, self.device = trt, engine, device
        self.context = _execution_context(engine)
        self.buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, -1))
        if nbytes > capacity:
            if capacity >= 0:
                self.device.free(ptr)
            ptr = self.device.alloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, engine, context, device = self.trt, self.engine, self.context, self.device
        addresses = {}
        for name, array in inputs.items():
            array = np.ascontiguousarray(array.astype(trt.nptype(engine.get_tensor_dtype(name)), copy=False))
            _set_input_shape(context, name, array.shape)
            addresses[name] = self._buffer(name, array.nbytes)
            device.copy_in(addresses[name], array)
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                continue
            shape = tuple(context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            addresses[name] = self._buffer(name, int(np.prod(shape)) * dtype.itemsize)
            outputs[name] = (shape, dtype)
        for name, ptr in addresses.items():
            if not context.set_tensor_address(name, ptr):
                raise EngineBuildError(f"TensorRT refused the device buffer of tensor {name!r}; its log above says why")
        if not context.execute_async_v3(device.stream):
            raise EngineBuildError("TensorRT failed to run the engine")
        device.synchronize()
        return {name: device.download(addresses[name], shape, dtype) for name, (shape, dtype) in outputs.items()}
