"""The front's HTTP side (aiohttp): Triton's KServe v2 HTTP API as clients need it, each inference request checked
(front_checks.py) before it is passed to Triton's private port; the APIs clients do not need answered 403 here."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from vitexport.serving.front_checks import (
    CLASSIFICATION_EXTENSION,
    ELEMENT_SIZE,
    InputTensor,
    Limits,
    ModelSpec,
    OutputTensor,
    Refused,
    check_request,
)

CONTROL_HEADER = "vitexport-control-key"  # server.CONTROL_HEADER (not imported: server.py imports the front)
INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
OPEN = re.compile(
    r"^/v2(?:/health/(?:live|ready)|/models/stats|/models/[^/]+(?:/versions/[^/]+)?(?:/ready|/config|/stats)?)?$"
)
INDEX = "/v2/repository/index"
CONTROL = re.compile(r"^/v2/repository/models/[^/]+/(?:load|unload)$")
CLOSED = re.compile(r"^/v2/(?:systemsharedmemory|cudasharedmemory|logging|trace)(?:/|$)|/trace/setting$")
TO_TRITON = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding", CONTROL_HEADER)
FROM_TRITON = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")
HTTP_INPUT = frozenset({"binary_data_size"})  # the parameters HTTP's inputs and outputs may carry
HTTP_OUTPUT = frozenset({CLASSIFICATION_EXTENSION, "binary_data"})
OFF_LOOP_BYTES = 1 << 20


def error(status: int, message: str) -> web.Response:
    """Triton's own error form: one JSON object, one line."""
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


class ConfigCache:
    """Each model's config as Triton reports it, fetched once; forgotten when the key's holder loads or unloads."""

    MAX_ENTRIES = 1024  # only configs Triton answered are kept, so only served names; bounded all the same

    def __init__(self, session: aiohttp.ClientSession, triton_http: str):
        self._session = session
        self._base = f"http://{triton_http}"
        self._specs: dict[tuple[str, str], ModelSpec] = {}

    async def get(self, model: str, version: str) -> ModelSpec:
        """`model` and `version` as the URL spells them (percent-encoded)."""
        spec = self._specs.get((model, version))
        if spec is not None:
            return spec
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/config"
        try:
            async with self._session.get(self._base + path) as r:
                doc = json.loads(await r.read())
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise Refused(f"the server cannot read the model's config: {e}", status=503) from None
        if r.status != 200 or not isinstance(doc, dict):
            message = doc.get("error") if isinstance(doc, dict) else None
            raise Refused(str(message or f"no config for model {model!r}"), status=r.status if r.status >= 400 else 502)
        try:
            spec = ModelSpec.from_config(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise Refused(f"the model's config is not understood here ({e})", status=500) from None
        if len(self._specs) < self.MAX_ENTRIES:
            self._specs[model, version] = spec
        return spec

    def forget(self) -> None:
        self._specs.clear()


class HttpFront:
    """One aiohttp application: every path goes through `handle`, which decides what Triton sees."""

    def __init__(
        self, session: aiohttp.ClientSession, configs: ConfigCache, triton_http: str, limits: Limits, key: str | None
    ):
        self._session, self._configs, self._limits, self._key = session, configs, limits, key
        self._base = f"http://{triton_http}"

    def app(self) -> web.Application:
        # The body cap, plus room for the headers' JSON: read() refuses more with 413, before holding it all.
        app = web.Application(client_max_size=self._limits.max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        try:
            match = INFER.match(path)
            if match:
                return await self._infer(request, match["model"], match["version"] or "")
            if OPEN.match(path):
                return await self._forward(request, await self._body(request))
            if path == INDEX or CONTROL.match(path):
                return await self._repository(request, path)
            if CLOSED.search(path):
                return error(403, "this API is closed on this server (shared memory, logging and trace are not served)")
            return error(404, f"not served here: {path[:80]}")
        except Refused as e:
            return error(e.status, str(e))

    async def _infer(self, request: web.Request, model: str, version: str) -> web.StreamResponse:
        body = await self._body(request)
        spec = await self._configs.get(model, version)
        header = request.headers.get("Inference-Header-Content-Length")
        if len(body) > OFF_LOOP_BYTES:  # a large JSON takes a while to parse: not on the loop every request shares
            await asyncio.to_thread(self._check, spec, body, header)
        else:
            self._check(spec, body, header)
        return await self._forward(request, body)

    def _check(self, spec: ModelSpec, body: bytes, header: str | None) -> None:
        inputs, outputs, parameters = parse_infer(body, header)
        limits = self._limits
        check_request(
            spec, inputs, outputs, parameters, limits, input_parameters=HTTP_INPUT, output_parameters=HTTP_OUTPUT
        )

    async def _repository(self, request: web.Request, path: str) -> web.StreamResponse:
        if self._key is None:
            if path == INDEX:  # read-only, and how `vitexport infer` finds the one image ensemble
                return await self._forward(request, await self._body(request))
            return error(403, "loading and unloading models is not allowed: model-control mode is NONE on this server")
        given = request.headers.get(CONTROL_HEADER, "")
        if not secrets.compare_digest(given.encode(), self._key.encode()):
            return error(403, f"This API is restricted, expecting header '{CONTROL_HEADER}' (serve printed it)")
        response = await self._forward(request, await self._body(request))
        self._configs.forget()  # a model loaded again may have another config
        return response

    async def _body(self, request: web.Request) -> bytes:
        cap = self._limits.max_request_bytes
        too_large = Refused(f"the request body is over {cap} bytes, the limit per request", status=413)
        if request.content_length is not None and request.content_length > cap:
            raise too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        # A gzip or deflate body is decompressed by aiohttp as it reads, within the same cap (a small bomb is no large
        # request); Triton gets it plain.
        return body

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        """The request to Triton as it came (decompressed), Triton's answer back as it is (compressed or not)."""
        headers = {name: value for name in TO_TRITON if (value := request.headers.get(name)) is not None}
        try:
            async with self._session.request(
                request.method, self._base + request.raw_path, data=body, headers=headers
            ) as r:
                data = await r.read()
                back = {name: value for name in FROM_TRITON if (value := r.headers.get(name)) is not None}
                return web.Response(status=r.status, body=data, headers=back)
        except (aiohttp.ClientError, OSError) as e:
            return error(503, f"the inference server is not answering: {e.__class__.__name__}")


def parse_infer(
    body: bytes, header_length: str | None
) -> tuple[list[InputTensor], list[OutputTensor], Mapping[str, object]]:
    """The inputs, outputs and parameters of a KServe v2 JSON request (with binary data after the JSON when the
    Inference-Header-Content-Length header says where the JSON ends)."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise Refused(f"Inference-Header-Content-Length must be 1..{len(body)} (the body's length)")
        head, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError):
        raise Refused("the request is not valid JSON") from None
    doc = _object(doc, "the request", {"id", "parameters", "inputs", "outputs"})
    if not isinstance(doc.get("id", ""), str):
        raise Refused("id must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise Refused("inputs must be a non-empty list")
    view, offset = memoryview(binary), 0
    inputs = []
    for item in raw_inputs:
        tensor, used = _input(item, view[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise Refused(
            f"the body has {len(binary)} bytes after its JSON; the inputs' binary_data_size add up to {offset}"
        )
    raw_outputs = doc.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise Refused("outputs must be a list")
    outputs = []
    for item in raw_outputs:
        out = _object(item, "an output", {"name", "parameters"})
        outputs.append(OutputTensor(_name(out), _object(out.get("parameters", {}), "output parameters")))
    return inputs, outputs, _object(doc.get("parameters", {}), "parameters")


def _input(item: object, binary: memoryview) -> tuple[InputTensor, int]:
    """One input of the JSON, and the binary bytes it takes from the front of `binary`."""
    tensor = _object(item, "an input", {"name", "shape", "datatype", "parameters", "data"})
    name = _name(tensor)
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not isinstance(datatype, str):
        raise Refused(f"input {name!r} needs a shape (a list) and a datatype (a string)")
    parameters = _object(tensor.get("parameters", {}), f"input {name!r}'s parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(binary) or "data" in tensor:
            raise Refused(f"input {name!r}: binary_data_size must be 0..{len(binary)} (the bytes left), without data")
        return InputTensor(name, datatype, shape, raw=binary[:size], parameters=parameters), size
    if "data" not in tensor:
        raise Refused(f"input {name!r} carries no data (neither data nor binary_data_size)")
    return InputTensor(name, datatype, shape, values=count_values(tensor["data"], datatype), parameters=parameters), 0


def count_values(data: object, datatype: str) -> int:
    """The values in JSON `data` (nested lists, flattened), each of the datatype's JSON kind."""
    if not isinstance(data, list):
        raise Refused("data must be a list")
    if datatype == "BYTES":
        kinds: tuple[type, ...] = (str,)
    elif datatype == "BOOL":
        kinds = (bool,)
    elif datatype.startswith("FP") or datatype == "BF16":
        kinds = (int, float)
    elif datatype in ELEMENT_SIZE:
        kinds = (int,)
    else:
        raise Refused(f"unknown datatype {datatype[:20]!r}")
    count, stack = 0, [data]
    while stack:
        for value in stack.pop():
            if type(value) is list:
                stack.append(value)
            elif type(value) in kinds:
                count += 1
            else:
                raise Refused(f"data holds {str(value)[:24]!r}, not a {datatype} value")
    return count


def _object(value: object, what: str, keys: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refused(f"{what} must be a JSON object")
    unknown = set(value) - keys if keys is not None else set()
    if unknown:
        raise Refused(f"{what} has an unknown field {sorted(unknown)[0][:40]!r}")
    return value


def _name(item: Mapping[str, object]) -> str:
    name = item.get("name")
    if not isinstance(name, str):
        raise Refused("every input and output needs a name (a string)")
    return name
