"""A photograph's data written beside each served model, for Triton's own tools and start-up:

- `perf_analyzer_input.json`: perf_analyzer's input-data file (`--input-data`), one request of one image: a tensor
  model's inputs as the preprocessing makes them of the photograph (perf_analyzer's default random bytes read as FP32
  hold NaN and Inf, which the served models refuse), an image ensemble's the encoded photograph (a JPEG folder would be
  split on newlines). Tensors go as `b64`: the raw bytes, a BYTES element as Triton serializes it (a 4-byte
  little-endian length, then the bytes).
- `model_warmup` in every config but the ensembles' (2.51 fails an ensemble's warmup), so the first request does not
  pay the start-up: the preprocessing warms up on the photograph (`warmup/image` in the model folder, where 2.51
  reads `input_data_file`), the model on the photograph's tensors, a post-processing on zeros.

The photograph is scikit-image's `chelsea` (a tabby cat, public domain), 451x300, packaged with vitexport.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitexport.preprocess import PreprocessConfig, preprocess_detection, preprocess_image
from vitexport.serving import config as cfg

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as pb

PHOTO = Path(__file__).parent / "photos" / "chelsea.jpg"
PERF_INPUT = "perf_analyzer_input.json"
WARMUP = "warmup"
NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


def serialized(data: bytes) -> bytes:
    """One BYTES element as Triton reads it from raw input: its length (uint32, little-endian), then the bytes."""
    return struct.pack("<I", len(data)) + data


def photo_tensors(preprocess: PreprocessConfig) -> list[np.ndarray]:
    """What the image ensemble's preprocessing makes of the photograph, in its outputs' order (one image, no batch
    axis): the pixels; a detector's canvas, its mask and the original size."""
    data = PHOTO.read_bytes()
    if not preprocess.detection:
        return [preprocess_image(data, preprocess)]
    made = preprocess_detection(data, preprocess)
    return [made.pixels, made.mask, np.array(made.size, dtype=np.int64)]


def _inputs(config: pb.ModelConfig, tensors: list[np.ndarray] | None) -> list[tuple[str, np.ndarray | bytes, list]]:
    """(name, one request's data, its shape as the config has it) of each input; BYTES inputs take the photograph."""
    out: list[tuple[str, np.ndarray | bytes, list]] = []
    for i, tensor in enumerate(config.input):
        dims = [max(int(d), 1) for d in tensor.dims]
        if tensor.data_type == cfg.pb.TYPE_STRING:
            out.append((tensor.name, serialized(PHOTO.read_bytes()), dims))
            continue
        dtype = NUMPY[cfg.pb.DataType.Name(tensor.data_type)]
        data = np.zeros(dims, dtype) if tensors is None else tensors[i].astype(dtype)
        if config.max_batch_size == 0:  # a fixed-batch model: its dims carry the batch, the photograph repeated
            data = np.broadcast_to(data, dims)
        out.append((tensor.name, np.ascontiguousarray(data), dims))
    return out


def perf_input(config: pb.ModelConfig, tensors: list[np.ndarray] | None) -> str:
    """perf_analyzer's input-data JSON for `config`: one request of the photograph (`-b 1`)."""
    request = {
        name: {"b64": base64.b64encode(data if isinstance(data, bytes) else data.tobytes()).decode(), "shape": dims}
        for name, data, dims in _inputs(config, tensors)
    }
    return json.dumps({"data": [request]}) + "\n"


def add_warmup(config: pb.ModelConfig, tensors: list[np.ndarray] | None) -> dict[str, bytes]:
    """Add a `model_warmup` sample to `config` (the photograph's data where `tensors` are given or the input is
    encoded images, zeros otherwise) and return the files it reads, by their path in the model folder."""
    sample = config.model_warmup.add(name="photo", batch_size=1)
    files: dict[str, bytes] = {}
    for i, ((name, data, dims), tensor) in enumerate(zip(_inputs(config, tensors), config.input, strict=True)):
        # A fixed-batch model's batch is in its dims here too (batch_size 1 stands for "one request").
        warm = sample.inputs[name]
        warm.data_type = tensor.data_type
        warm.dims.extend(dims)
        if isinstance(data, bytes) or tensors is not None:
            warm.input_data_file = f"input{i}"  # not the tensor's name: an imported model's may hold a "/"
            files[f"{WARMUP}/{warm.input_data_file}"] = data if isinstance(data, bytes) else data.tobytes()
        else:
            warm.zero_data = True
    return files
