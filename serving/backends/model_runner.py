"""Triton Python-backend model runner: runs an ONNX (or OpenVINO IR) model of any task on the CPU with ONNX Runtime or
OpenVINO.

It feeds every input the config declares (the task's: pixel_values; a detector's pixel_mask too) and returns every
output it declares, as float32. A request whose inputs are not finite, whose mask is not 0s and 1s, or whose outputs
come out NaN or Inf is refused as the client's error (INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT), on its own.

The config's parameters choose the runtime (`runtime`), the model file in the version folder (`model_filename`)
and the intra-op thread count (`intra_op_threads`, 0: the runtime's default). Only numpy and the chosen runtime
are imported, so the file also runs in the official Triton containers with that runtime pip-installed.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vitexport.tasks import TASKS


class _OnnxRuntime:
    def __init__(self, path: Path, threads: int, output_names: list[str], precision: str):
        from vitexport.ort import ort_session  # the precision lives in the graph itself

        # Spinning worker threads steal the CPU from the other stubs and the server's own threads between batches.
        self.session = ort_session(path, threads=threads, spinning=False)
        self.output_names = output_names

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


# The artifact's precision as OpenVINO's inference precision hint; INT8 IRs set none (NNCF chose per op).
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class _OpenVino:
    def __init__(self, path: Path, threads: int, output_names: list[str], precision: str):
        import openvino as ov  # imported here: only models that ask for OpenVINO need it installed

        config: dict[str, str | int] = {"PERFORMANCE_HINT": "LATENCY"}  # latency, all threads: fastest on a few cores
        if precision in _OV_PRECISION:
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = output_names

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        return [np.asarray(results[self.compiled.output(name)]) for name in self.output_names]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params["model_filename"]
        self.input_names = [i["name"] for i in config["input"]]
        # The task says which input is a mask (a detector's pixel_mask): its values are checked per request.
        task = TASKS.get(params.get("vitexport_task", ""))
        self.masks = {task.mask_input} & set(self.input_names) if task and task.mask_input else set()
        self.output_names = [o["name"] for o in config["output"]]
        runners: dict[str, type[_OnnxRuntime | _OpenVino]] = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVino}
        runner = runners[params["runtime"]]
        threads = int(params.get("intra_op_threads", "0"))
        precision = params.get("precision", "fp32")
        self.run = runner(path, threads, self.output_names, precision)

    def execute(self, requests: list[Any]) -> list[Any]:
        # Dynamic batching hands over several requests at once: run them as one batch, then split the outputs.
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names} for r in requests
        ]
        refusals = [self._refusal(feeds) for feeds in inputs]
        answers = iter(self._run([feeds for feeds, refused in zip(inputs, refusals, strict=True) if refused is None]))
        return [next(answers) if refused is None else _client_error(refused) for refused in refusals]

    def _refusal(self, feeds: dict[str, np.ndarray]) -> str | None:
        """Why a request's inputs are the client's mistake, refused on their own: NaN or Inf pixels would come back
        as NaN logits with a 200, and a mask of 7 or -1 would scale the image's features silently."""
        for name, x in feeds.items():
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                return f"{name} holds NaN or Inf values"
            if name in self.masks and not ((x == 0) | (x == 1)).all():
                value = x[(x != 0) & (x != 1)].flat[0]
                return f"{name} is a mask: its values must be 0 or 1, not {value}"
        return None

    def _run(self, inputs: list[dict[str, np.ndarray]]) -> list:
        """One response per request's inputs, from one batched run of them all."""
        if not inputs:
            return []
        sizes = [len(feeds[self.input_names[0]]) for feeds in inputs]
        if len(inputs) > 1:
            feeds = {name: np.concatenate([f[name] for f in inputs]) for name in self.input_names}
        else:
            feeds = inputs[0]
        try:
            outputs = self.run(feeds)
        except Exception as e:  # a runtime failure fails these requests, not the model
            error = pb_utils.TritonError(f"inference failed: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in inputs]
        responses, start = [], 0
        for size in sizes:
            parts = [np.ascontiguousarray(out[start : start + size], dtype=np.float32) for out in outputs]
            start += size
            # Finite inputs far out of range (pixels of 3e38) overflow inside the model: the answer would be NaN or
            # Inf with a 200. The request's values are the cause, so it is the client's error, and only its own.
            bad = next((n for n, p in zip(self.output_names, parts, strict=True) if not np.isfinite(p).all()), None)
            if bad is not None:
                responses.append(_client_error(f"{bad} came out NaN or Inf: input values out of the model's range"))
                continue
            tensors = [pb_utils.Tensor(name, p) for name, p in zip(self.output_names, parts, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


def _client_error(message: str) -> Any:
    """A response that fails one request as the client's mistake: HTTP 400, gRPC INVALID_ARGUMENT."""
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )
