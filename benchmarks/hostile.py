"""The hostile requests of the soak: the client mistakes the reliability issue found harmful (a decompression bomb, a
20000 x 1 strip, undecodable and empty bytes, NaN pixels, a wrong shape) and requests abandoned mid-flight or cut in
half; each sent as it comes, and what the server answered."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import zlib

import numpy as np

from vitexport.serving import config as cfg

CLIENT_ERRORS = {"400", "StatusCode.INVALID_ARGUMENT"}  # what tritonclient reports for a refused bad request


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(side: int = 20_000) -> bytes:
    """A PNG whose header claims side x side pixels (and whose data is empty): a decoder that trusts it allocates
    side^2 x 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


ABANDONED = "request abandoned mid-flight"  # a good request whose client gives up after 20 ms
HALF_A_REQUEST = "half an HTTP request"  # headers promising a body that never comes


def hostile_cases(model: str, image_model: str, input_name: str, size: int) -> dict[str, tuple[str, dict]]:
    """name -> (served model, inputs): the client mistakes the server must refuse as such, without harm, and a
    request its client abandons."""

    def image(data: bytes) -> tuple[str, dict]:
        return image_model, {cfg.IMAGE_INPUT: np.array([[data]], dtype=np.object_)}

    return {
        "decompression bomb (20000 x 20000 PNG)": image(_bomb_png()),
        "20000 x 1 strip": image(_png(20000, 1)),
        "undecodable bytes": image(b"\x89PNG\r\n\x1a\n but not really"),
        "empty image": image(b""),
        "NaN pixels": (model, {input_name: np.full((1, 3, size, size), np.nan, np.float32)}),
        "wrong shape": (model, {input_name: np.zeros((1, 3, size // 2, size // 2), np.float32)}),
        ABANDONED: (model, {input_name: np.zeros((4, 3, size, size), np.float32)}),
    }


def send(client, module, model: str, inputs: dict[str, np.ndarray], outputs: list[str], options: dict):
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensors.append(module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        tensors[-1].set_data_from_numpy(array)
    requested = [module.InferRequestedOutput(name) for name in outputs]
    return client.infer(model, tensors, outputs=requested, **options)


def _raw_http(host: str, port: int, request: bytes) -> None:
    """Send bytes on a new HTTP connection and close it without reading a reply."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)


def _infer_request(model: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A whole KServe v2 JSON infer request over HTTP/1.1."""
    import json

    tensors = [
        {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()} for k, v in inputs.items()
    ]
    body = json.dumps({"inputs": tensors}).encode()
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def hostile_request(name: str, cases: dict[str, tuple[str, dict]], protocol: str, e) -> str:
    """The status the server answered with, or what became of the request."""
    from tritonclient.utils import InferenceServerException

    from vitexport.serving.client import connect

    if name == HALF_A_REQUEST:  # headers promising a body that never comes
        _raw_http(e.host, e.http_port, b"POST /v2/models/x/infer HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n{")
        return "sent"
    if name == ABANDONED and protocol == "http":  # the whole request, and the connection closed at once
        _raw_http(e.host, e.http_port, _infer_request(*cases[name]))
        return "sent"
    timeout = 0.001 if name == ABANDONED else 30.0  # gRPC: a deadline the server cannot meet
    triton, module = connect(e.http if protocol == "http" else e.grpc, protocol, timeout=timeout)
    options = {"client_timeout": timeout} if protocol == "grpc" else {}
    model, inputs = cases[name]
    try:
        send(triton, module, model, inputs, [], options)
        return "answered"
    except InferenceServerException as error:
        return str(error.status())
    except Exception as error:  # the client's own timeout (HTTP): what abandoning is
        return type(error).__name__
    finally:
        with contextlib.suppress(Exception):
            triton.close()
