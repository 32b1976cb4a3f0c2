"""Triton Python-backend model runner: runs an ONNX (or OpenVINO IR) model of any task on the CPU with ONNX Runtime or
OpenVINO.

It feeds every input the config declares (the task's: pixel_values; a detector's pixel_mask too) and returns every
output it declares, as float32.

The config's parameters choose the runtime (`runtime`), the model file in the version folder (`model_filename`)
and the intra-op thread count (`intra_op_threads`, 0: the runtime's default). Only numpy and the chosen runtime
are imported, so the file also runs in the official Triton containers with that runtime pip-installed.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


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
        # NaN or Inf pixels would come back as NaN logits with a 200: the client's mistake, refused per request.
        bad = [
            next((n for n, x in feeds.items() if x.dtype.kind == "f" and not np.isfinite(x).all()), None)
            for feeds in inputs
        ]
        if not any(bad):
            return self._run(inputs)
        answers = iter(self._run([feeds for feeds, name in zip(inputs, bad, strict=True) if name is None]))
        return [
            next(answers)
            if name is None
            else pb_utils.InferenceResponse(
                output_tensors=[],
                error=pb_utils.TritonError(f"{name} holds NaN or Inf values", pb_utils.TritonError.INVALID_ARG),
            )
            for name in bad
        ]

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
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size], dtype=np.float32))
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
