"""Run any ONNX or OpenVINO artifact on the CPU: float32 images in, float32 logits out, whatever the graph's I/O
types, so that validation and benchmarks treat every variant alike. A detector also takes its padding mask
(N, S, S; 1 = image, 0 = canvas padding); without one it is given an all-ones mask (the whole canvas is image)."""

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
    run: Callable[[np.ndarray, np.ndarray | None], list[np.ndarray]]  # (B,3,S,S) f32, mask -> outputs, f32

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        return self.run(x, mask)


def feeds(artifact: ModelArtifact, x: np.ndarray, mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """The graph's inputs: the images, and for a detector its int64 mask (all ones when none is given)."""
    if artifact.mask_name is None:
        if mask is not None:
            raise ArtifactError(f"{artifact.path.name} is a {artifact.task} model; it takes no mask")
        return {artifact.input_name: x}
    if mask is None:
        mask = np.ones((x.shape[0], *x.shape[2:]), dtype=np.int64)
    return {artifact.input_name: x, artifact.mask_name: np.ascontiguousarray(mask, dtype=np.int64)}


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

    def run(x: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        out = session.run(names, feeds(artifact, x.astype(in_type, copy=False), mask))
        return [np.asarray(o, dtype=np.float32) for o in out]

    return Runner("onnxruntime", run)


def _openvino(artifact: ModelArtifact, threads: int | None) -> Runner:
    from vitexport.export.openvino import compile_ir

    compiled = compile_ir(Path(artifact.path), artifact.precision, threads)
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in artifact.output_names]

    def run(x: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
        result = request.infer(feeds(artifact, np.ascontiguousarray(x, dtype=np.float32), mask))
        return [np.array(result[o], dtype=np.float32) for o in outputs]

    return Runner("openvino", run)
