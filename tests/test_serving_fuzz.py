"""No single request stops the server (issues 21.2 and 22.2): against a real Triton behind the validating front, on a
repository holding every task (a classifier, a features export, a detector, with their image ensembles and pre- and
post-processing models), malformed shapes (0, -1, 2^31, 2^63, products that overflow int64), data that disagrees
with its shape, wrong datatypes, unknown and ill-typed parameters and the inference extensions (classification on
every output of every model, binary_data, priority, timeout, sequence ids on a non-sequence model) are sent over
HTTP and gRPC; after each, the server is ready and a good request answers as it did before. A few hundred requests,
chosen with a fixed seed; loopback only."""

from __future__ import annotations

import http.client
import io
import json
import logging
import random
import struct
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
from PIL import Image

from vitexport.serving.repository import add_model
from vitexport.serving.server import TritonServer

SEED = 2122
PROTOCOLS = ("http", "grpc")
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "INT8": np.int8}
SAMPLED = 110  # per protocol, besides the cases every model gets


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]  # what it carries (BYTES: the strings)

    def raw(self) -> bytes:
        if isinstance(self.values, list):
            return b"".join(struct.pack("<I", len(s)) + s for s in self.values)
        return self.values.tobytes()


@dataclass(frozen=True)
class Case:
    what: str
    model: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[tuple[str, dict], ...] = ()
    parameters: dict = field(default_factory=dict)
    binary: bool = True  # HTTP: binary data after the JSON (BYTES always); False: JSON `data`
    refused: bool = True  # the front answers 400 / INVALID_ARGUMENT itself
    answered: bool = True  # not refused: answered 200 / OK (False: the backend may refuse it, in one line)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vitexport.export.onnx import Heads, export_onnx

    root = tmp_path_factory.mktemp("fuzz_exports")
    torch.manual_seed(21)
    exports = {
        "vit": export_onnx("test_vit", root / "vit.onnx"),
        "feat": export_onnx("test_vit", root / "feat.onnx", heads=Heads.features),
        "detr": export_onnx("test_detr", root / "detr.onnx"),
    }
    repo = tmp_path_factory.mktemp("fuzz_repo")
    for name, artifact in exports.items():
        add_model(repo, artifact, name=name)
    with TritonServer(repo, startup_timeout=150) as s:
        yield s


@pytest.fixture(scope="module")
def configs(server) -> dict[str, dict]:
    out = {}
    for model in server.models:
        status, body = _http(server.endpoints.http, "GET", f"/v2/models/{model}/config")
        assert status == 200, body
        out[model] = json.loads(body)
    return out


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((60, 80, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _datatype(config_type: str) -> str:
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def good_inputs(config: dict, batch: int = 1) -> tuple[Tensor, ...]:
    """Inputs the model takes: a PNG for an image, zeros (ones for integers: masks, sizes) of 2 for a variable dim."""
    out = []
    for spec in config["input"]:
        datatype = _datatype(spec["data_type"])
        shape = (batch, *(d if d > 0 else 2 for d in spec["dims"]))
        count = int(np.prod(shape))
        if datatype == "BYTES":
            out.append(Tensor(spec["name"], datatype, shape, [png(i) for i in range(count)]))
        else:
            fill = 1 if datatype.startswith("INT") else 0
            out.append(Tensor(spec["name"], datatype, shape, np.full(count, fill, NUMPY[datatype])))
    return tuple(out)


# -- sending ------------------------------------------------------------------------------------------------------


def _http(address: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    """(status, the answer's JSON: the head of a binary answer)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        head = response.getheader("Inference-Header-Content-Length")
        return response.status, data[: int(head)] if head else data
    finally:
        connection.close()


def send_http(address: str, case: Case) -> tuple[int, str]:
    """(status, the answer's JSON) of the case as a KServe v2 HTTP request."""
    inputs, binary = [], b""
    for t in case.inputs:
        item: dict = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if case.binary or isinstance(t.values, list):
            item["parameters"] = {"binary_data_size": len(t.raw())}
            binary += t.raw()
        else:
            item["data"] = t.values.tolist()
        inputs.append(item)
    doc: dict = {"inputs": inputs, "outputs": [{"name": n, "parameters": p} for n, p in case.outputs]}
    if case.parameters:
        doc["parameters"] = case.parameters
    head = json.dumps(doc).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
    status, body = _http(address, "POST", f"/v2/models/{case.model}/infer", head + binary, headers)
    return status, body.decode(errors="replace")


def _parameter(pb, value) -> object:
    p = pb.InferParameter()
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = max(-(2**63), min(value, 2**63 - 1))
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)
    return p


def send_grpc(stub, pb, case: Case) -> tuple[str, str]:
    """(status code name, details or "") of the case as a ModelInferRequest (raw_input_contents)."""
    import grpc

    request = pb.ModelInferRequest(model_name=case.model)
    for t in case.inputs:
        shape = [max(-(2**63), min(d, 2**63 - 1)) for d in t.shape]  # int64 on the wire: 2^63 is 2^63 - 1 there
        request.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
        request.raw_input_contents.append(t.raw())
    for name, parameters in case.outputs:
        output = request.outputs.add(name=name)
        for key, value in parameters.items():
            output.parameters[key].CopyFrom(_parameter(pb, value))
    for key, value in case.parameters.items():
        request.parameters[key].CopyFrom(_parameter(pb, value))
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""
    return "OK", ""


# -- the cases ----------------------------------------------------------------------------------------------------


def _one(t: Tensor) -> np.ndarray | list[bytes]:
    return t.values[:1]


def shape_cases(model: str, good: tuple[Tensor, ...]) -> list[Case]:
    """Each dim of the first input in turn 0, -1, 2^31, 2^63 or -2^63, carrying one value; dims whose product
    overflows int64."""
    first, rest = good[0], good[1:]
    out = []
    for value in (0, -1, 2**31, 2**63, -(2**63)):
        for dim in range(len(first.shape)):
            shape = tuple(value if i == dim else d for i, d in enumerate(first.shape))
            tensor = replace(first, shape=shape, values=_one(first))
            out.append(Case(f"shape dim {dim} = {value}", model, (tensor, *rest)))
    overflow = replace(first, shape=(2**32,) * max(len(first.shape), 2), values=_one(first))
    out.append(Case("shape product overflows int64", model, (overflow, *rest)))
    return out


def data_cases(model: str, good: tuple[Tensor, ...]) -> list[Case]:
    first, rest = good[0], good[1:]
    more = first.values + first.values[:1] if isinstance(first.values, list) else np.concatenate([first.values] * 2)
    out = [
        Case("one value short", model, (replace(first, values=first.values[:-1]), *rest)),
        Case("twice the values", model, (replace(first, values=more), *rest)),
    ]
    for datatype in ("FP64" if first.datatype != "FP64" else "FP32", "INT8", "BYTES", "NOPE"):
        if datatype != first.datatype:
            out.append(Case(f"declared {datatype}", model, (replace(first, datatype=datatype), *rest)))
    if not any(isinstance(t.values, list) for t in good):
        out.append(Case("JSON data", model, good, binary=False, refused=False))
        short = (replace(first, values=first.values[:-1]), *rest)
        out.append(Case("JSON data one value short", model, short, binary=False))
    return out


BAD_PARAMETERS = (
    {"foo": 1},
    {"priority": "high"},
    {"priority": -1},
    {"priority": 2**40},
    {"timeout": -5},
    {"timeout": 2**62},
    {"sequence_id": 7, "sequence_start": True},
    {"sequence_id": 7},
    {"sequence_end": True},
    {"binary_data_output": "yes"},
)
GOOD_PARAMETERS = ({"priority": 0}, {"timeout": 30_000_000}, {"binary_data_output": True})


def parameter_cases(model: str, good: tuple[Tensor, ...]) -> list[Case]:
    out = [Case(f"parameters {p}", model, good, parameters=p) for p in BAD_PARAMETERS]
    out += [Case(f"parameters {p}", model, good, parameters=p, refused=False) for p in GOOD_PARAMETERS]
    # A detector's own parameters: passed on to its backend, which checks them; refused for any other model.
    detector = model in ("detr_image", "detr_postprocess")
    for p in ({"threshold": 0.9}, {"top_k": "x"}, {"threshold": float("nan")}):
        out.append(Case(f"parameters {p}", model, good, parameters=p, refused=not detector, answered=False))
    return out


def classifiable(spec: dict, count: object) -> bool:
    """Where the front lets the classification extension through: a fixed-width numeric output, 1..its width."""
    dims = spec["dims"]
    numeric = spec["data_type"] not in ("TYPE_STRING", "TYPE_BOOL", "TYPE_BF16")
    return numeric and min(dims) > 0 and type(count) is int and 1 <= count <= int(np.prod(dims))


def classification_cases(model: str, config: dict, good: tuple[Tensor, ...]) -> list[Case]:
    """Classification of 3 on every output (BYTES ones included): what crashed Triton."""
    return [
        Case(
            f"classification 3 on {o['name']}",
            model,
            good,
            ((o["name"], {"classification": 3}),),
            refused=not classifiable(o, 3),
        )
        for o in config["output"]
    ]


def output_cases(model: str, config: dict, good: tuple[Tensor, ...], protocol: str) -> list[Case]:
    name = config["output"][0]["name"]
    out = [
        Case(f"classification {value!r}", model, good, ((name, {"classification": value}),))
        for value in ("3", 0, -1, 10**7, 2**63, 2.5, True)
    ]
    out += [
        Case("unknown output", model, good, (("nope", {}),)),
        Case("output parameter shared_memory_region", model, good, ((name, {"shared_memory_region": "x"}),)),
        Case("binary_data 'no'", model, good, ((name, {"binary_data": "no"}),)),
        # HTTP's binary output; gRPC has no such parameter (its outputs are always raw)
        Case("binary_data true", model, good, ((name, {"binary_data": True}),), refused=protocol == "grpc"),
        Case("output asked twice", model, good, ((name, {}), (name, {}))),
    ]
    return out


def all_cases(configs: dict[str, dict], protocol: str) -> list[Case]:
    """Classification on every output of every model, and a seeded sample of the rest (the same every run)."""
    every, rest = [], []
    for model, config in sorted(configs.items()):
        good = good_inputs(config)
        every += classification_cases(model, config, good)
        rest += shape_cases(model, good) + data_cases(model, good) + parameter_cases(model, good)
        rest += output_cases(model, config, good, protocol)
    return every + random.Random(SEED).sample(rest, SAMPLED)


# -- the server after each ----------------------------------------------------------------------------------------


class Sender:
    """One protocol's way to send a case and the good request, and what the good request answered first."""

    def __init__(self, server, configs: dict[str, dict], protocol: str):
        self.server, self.protocol = server, protocol
        self.good = Case("good", "vit", good_inputs(configs["vit"], batch=2), (("logits", {}),), refused=False)
        if protocol == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2, service_pb2_grpc

            self.channel = grpc.insecure_channel(server.endpoints.grpc)
            self.stub, self.pb = service_pb2_grpc.GRPCInferenceServiceStub(self.channel), service_pb2
        self.expected = self.logits()

    def send(self, case: Case) -> tuple[object, str]:
        if self.protocol == "http":
            return send_http(self.server.endpoints.http, case)
        return send_grpc(self.stub, self.pb, case)

    def logits(self) -> np.ndarray:
        if self.protocol == "http":
            status, body = send_http(self.server.endpoints.http, replace(self.good, binary=False))
            assert status == 200, body
            return np.array(json.loads(body)["outputs"][0]["data"], np.float32)
        request = self.pb.ModelInferRequest(model_name="vit")
        (t,) = self.good.inputs
        request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        request.raw_input_contents.append(t.raw())
        return np.frombuffer(self.stub.ModelInfer(request, timeout=60).raw_output_contents[0], np.float32)

    def check_right(self, after: str) -> None:
        assert self.server.running, f"tritonserver died after: {after}"
        assert self.server.is_ready(), f"not ready after: {after}"
        np.testing.assert_allclose(self.logits(), self.expected, atol=1e-6, err_msg=f"after: {after}")


def refused_in_one_line(protocol: str, answer: tuple[object, str]) -> bool:
    status, text = answer
    if protocol == "grpc":
        return status == "INVALID_ARGUMENT" and "\n" not in text and len(text) > 10
    try:
        return status == 400 and list(json.loads(text)) == ["error"] and "\n" not in text
    except ValueError:
        return False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_request_stops_the_server(server, configs, protocol):
    sender = Sender(server, configs, protocol)
    cases = all_cases(configs, protocol)
    assert 120 <= len(cases) <= 160
    for case in cases:
        answer = sender.send(case)
        where = f"{case.model}: {case.what} -> {answer[0]} {answer[1][:200]}"
        if case.refused:
            assert refused_in_one_line(protocol, answer), where
        elif case.answered:
            assert answer[0] in (200, "OK"), where
        else:
            assert answer[0] in (200, "OK") or refused_in_one_line(protocol, answer), where
        sender.check_right(where)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_what_killed_triton_is_refused_naming_the_limit(server, configs, protocol):
    sender = Sender(server, configs, protocol)
    (pixels,) = good_inputs(configs["vit"])
    huge = Case("the issue's shape", "vit", (replace(pixels, shape=(2147483648, 3, 64, 64), values=pixels.values[:1]),))
    status, text = sender.send(huge)
    assert refused_in_one_line(protocol, (status, text)) and "67108864 elements, the limit" in text
    # The classifier's image ensemble has no string output any more (its one output is numeric, labelled): a
    # detector's labels are the BYTES outputs left.
    assert all(classifiable(o, 3) for m in ("vit_image", "vit_postprocess") for o in configs[m]["output"])
    for model, output in (("detr_image", "labels"), ("detr_postprocess", "labels"), ("detr_image", "boxes")):
        good = good_inputs(configs[model])
        status, text = sender.send(Case("classification", model, good, ((output, {"classification": 3}),)))
        assert refused_in_one_line(protocol, (status, text)), text
        assert f"output '{output}'" in text and "classification" in text
        sender.check_right(f"classification on {model}'s {output}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classification_answers_where_triton_handles_it(server, configs, protocol):
    sender = Sender(server, configs, protocol)
    case = replace(sender.good, outputs=(("logits", {"classification": 3}),))
    labels = (server.repo_dir / "vit" / "labels.txt").read_text().splitlines()
    top = np.argsort(-sender.expected.reshape(2, -1), axis=1)[:, :3]
    if protocol == "http":
        status, body = send_http(server.endpoints.http, case)
        assert status == 200, body
        strings = json.loads(body)["outputs"][0]["data"]
    else:
        assert sender.send(case) == ("OK", "")
        import tritonclient.grpc as grpcclient

        (t,) = case.inputs
        with grpcclient.InferenceServerClient(server.endpoints.grpc) as c:
            x = grpcclient.InferInput(t.name, list(t.shape), t.datatype)
            x.set_data_from_numpy(t.values.reshape(t.shape))
            result = c.infer("vit", [x], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
        strings = [s.decode() for s in result.as_numpy("logits").ravel()]
    # value:index:label, the extension's form: the same ranking as the logits
    indices = [int(s.split(":")[1]) for s in strings]
    assert indices == top.ravel().tolist()
    assert [s.split(":", 2)[2] for s in strings] == [labels[i] for i in indices]


def test_only_the_apis_clients_need_are_open(server):
    http = server.endpoints.http
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/models/vit",
        "/v2/models/vit/config",
        "/v2/models/vit/versions/1/stats",
    ):
        assert _http(http, "GET", path)[0] == 200, path
    assert _http(http, "POST", "/v2/repository/index")[0] == 200  # read-only: how `infer` finds the ensemble
    closed = [
        ("POST", "/v2/systemsharedmemory/region/x/register", b'{"key": "/x", "offset": 0, "byte_size": 8}'),
        ("GET", "/v2/systemsharedmemory/status", b""),
        ("POST", "/v2/cudasharedmemory/region/x/register", b"{}"),
        ("POST", "/v2/logging", b'{"log_verbose_level": 1}'),
        ("GET", "/v2/trace/setting", b""),
        ("POST", "/v2/models/vit/trace/setting", b"{}"),
        ("POST", "/v2/repository/models/vit/unload", b""),
        ("POST", "/v2/repository/models/evil/load", b"{}"),
    ]
    for method, path, body in closed:
        status, text = _http(http, method, path, body)
        assert status == 403 and list(json.loads(text)) == ["error"], (path, status, text)
    assert server.is_ready() and _http(http, "GET", "/v2/models/vit/ready")[0] == 200


def test_the_closed_rpcs_are_denied(server):
    import grpc
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.endpoints.grpc) as c:
        assert c.is_server_ready() and c.get_model_config("vit").config.max_batch_size == 8
        assert c.get_model_repository_index().models  # read-only
        for call in (
            lambda: c.register_system_shared_memory("x", "/x", 8),
            lambda: c.get_system_shared_memory_status(),
            lambda: c.get_cuda_shared_memory_status(),
            lambda: c.update_log_settings({"log_verbose_level": 1}),
            lambda: c.get_trace_settings(),
            lambda: c.unload_model("vit"),
        ):
            with pytest.raises(grpcclient.InferenceServerException) as e:
                call()
            assert e.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
        assert c.is_model_ready("vit")


def test_a_request_over_the_body_cap_is_refused_unread(server):
    host, port = server.endpoints.http.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # the length alone: the front answers before the body is sent
        connection.putrequest("POST", "/v2/models/vit/infer")
        connection.putheader("Content-Length", str(server.front_limits.max_request_bytes + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert "limit per request" in json.loads(response.read())["error"]
    finally:
        connection.close()
    assert server.is_ready()


def test_a_stream_answers_a_refused_request_with_its_error(server, configs):
    import queue

    import tritonclient.grpc as grpcclient

    answers: queue.Queue = queue.Queue()
    (t,) = good_inputs(configs["vit"])
    x = grpcclient.InferInput(t.name, list(t.shape), t.datatype)
    x.set_data_from_numpy(t.values.reshape(t.shape))
    with grpcclient.InferenceServerClient(server.endpoints.grpc) as c:
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        c.async_stream_infer("vit", [x], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)])
        raw = grpcclient.InferInput("logits", [1, 1000], "FP32")
        raw.set_data_from_numpy(np.zeros((1, 1000), np.float32))
        too_many = grpcclient.InferRequestedOutput("probabilities", class_count=1001)
        c.async_stream_infer("vit_postprocess", [raw], outputs=[too_many])
        got = [answers.get(timeout=30) for _ in range(2)]
        c.stop_stream()
    errors = [str(error) for result, error in got if error is not None]
    results = [result.as_numpy("logits") for result, error in got if error is None]
    assert len(errors) == 1 and "classification must be an integer 1..1000" in errors[0]
    assert len(results) == 1 and results[0].shape == (1, 3)
    assert server.is_ready()


def test_compression_is_the_clients_choice(server, configs):
    """An answer is compressed only when the client asks (perf_analyzer does not, and reads the bytes as they come);
    a gzip request body is read as Triton would, within the same cap."""
    import gzip

    (t,) = good_inputs(configs["vit"])
    head = json.dumps(
        {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": t.values.tolist()}]}
    )
    path = "/v2/models/vit/infer"
    host, port = server.endpoints.http.rsplit(":", 1)
    for headers, body, encoded in (
        ({}, head.encode(), None),
        ({"Accept-Encoding": "gzip"}, head.encode(), "gzip"),
        ({"Content-Encoding": "gzip"}, gzip.compress(head.encode()), None),
    ):
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            assert response.status == 200 and response.getheader("Content-Encoding") == encoded, (headers, data[:200])
            answer = json.loads(gzip.decompress(data) if encoded else data)
            assert answer["outputs"][0]["shape"] == [1, 1000]
        finally:
            connection.close()
    bomb = gzip.compress(b" " * (server.front_limits.max_request_bytes + 1))
    status, text = _http(server.endpoints.http, "POST", path, bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "limit per request" in json.loads(text)["error"]


def test_a_malformed_http_request_is_a_400_without_a_traceback(server, caplog):
    """No Host header, half a request line: the client's mistake, answered 400; nothing logged with a traceback (the
    soak's hostile requests once filled serve's output with aiohttp's)."""
    import socket

    host, port = server.endpoints.http.rsplit(":", 1)
    for raw in (b"POST /v2/models/vit/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"GARBAGE\r\n\r\n"):
        with caplog.at_level(logging.DEBUG), socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(raw)
            answer = s.recv(4096)
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer[:80]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert server.is_ready()
