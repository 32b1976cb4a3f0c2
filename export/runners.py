"""Run any ONNX or OpenVINO artifact on the CPU: float32 images in, float32 logits out, whatever the graph's I/O
types, so that validation and benchmarks treat every variant alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ArtifactError, first_line


@dataclass(frozen=True)
class Runner:
    name: str  # "onnxruntime" | "openvino"
    run: Callable[[np.ndarray], list[np.ndarray]]  # (B,3,S,S) float32 -> logits per output, float32

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.run(x)


def load_runner(artifact: ModelArtifact, *, threads: int | None = None, spinning: bool = True) -> Runner:
    """A runner for the artifact's format. `spinning=False` stops ORT's idle threads from spinning, which slows any
    other runtime sharing the process."""
    if artifact.format == "onnx":
        return _onnxruntime(artifact, threads, spinning)
    if artifact.format == "openvino":
        return _openvino(artifact, threads)
    raise ArtifactError(f"{artifact.path.name} is a {artifact.format} artifact; only onnx and openvino run on the CPU")


def _onnxruntime(artifact: ModelArtifact, threads: int | None, spinning: bool) -> Runner:
    from vitexport.ort import ort_session

    try:
        session = ort_session(artifact.path, threads=threads, spinning=spinning)
    except Exception as e:
        raise ArtifactError(f"ONNX Runtime cannot load {artifact.path.name}: {first_line(e)}") from None
    in_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    names = list(artifact.output_names)

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = session.run(names, {artifact.input_name: x.astype(in_type, copy=False)})
        return [np.asarray(o, dtype=np.float32) for o in out]

    return Runner("onnxruntime", run)


def _openvino(artifact: ModelArtifact, threads: int | None) -> Runner:
    from vitexport.export.openvino import compile_ir

    compiled = compile_ir(Path(artifact.path), artifact.precision, threads)
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in artifact.output_names]

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({artifact.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return [np.array(result[o], dtype=np.float32) for o in outputs]

    return Runner("openvino", run)
