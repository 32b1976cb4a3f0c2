"""The front's gRPC side (grpc.aio): a generic proxy of inference.GRPCInferenceService that passes messages to
Triton's private port as raw bytes and parses only what it checks (ModelInferRequest, front_checks.py). The
shared-memory, logging and trace RPCs are answered PERMISSION_DENIED here, and so are the repository's unless the key's
holder asks (model control on); ModelStreamInfer is proxied, each request on the stream checked the same way."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc

from vitexport.serving.front_checks import InputTensor, Limits, OutputTensor, Refused, check_request
from vitexport.serving.front_http import CONTROL_HEADER, ConfigCache

SERVICE = "/inference.GRPCInferenceService/"
INFER = SERVICE + "ModelInfer"
STREAM = SERVICE + "ModelStreamInfer"
OPEN = frozenset(
    SERVICE + name
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig")
) | {SERVICE + "ModelStatistics", "/grpc.health.v1.Health/Check"}
INDEX = SERVICE + "RepositoryIndex"
CONTROL = frozenset({SERVICE + "RepositoryModelLoad", SERVICE + "RepositoryModelUnload"})
# Typed contents by datatype; FP16 and BF16 travel only as raw bytes.
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

Behaviour = Callable[[bytes, grpc.aio.ServicerContext], Coroutine[Any, Any, bytes]]


class GrpcFront(grpc.GenericRpcHandler):
    """Decides, per method, what Triton's gRPC service sees."""

    def __init__(self, channel: grpc.aio.Channel, configs: ConfigCache, limits: Limits, key: str | None):
        from tritonclient.grpc import service_pb2

        self._pb = service_pb2
        self._channel, self._configs, self._limits, self._key = channel, configs, limits, key

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if method == INFER:
            return grpc.unary_unary_rpc_method_handler(self._infer)
        if method == STREAM:
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if method in OPEN or (method == INDEX and self._key is None):  # the index is read-only
            return grpc.unary_unary_rpc_method_handler(self._forwarder(method))
        if method == INDEX or method in CONTROL:
            return grpc.unary_unary_rpc_method_handler(self._repository(method))
        if method.startswith(SERVICE):
            return grpc.unary_unary_rpc_method_handler(_denied)
        return None  # grpc answers UNIMPLEMENTED

    def _forwarder(self, method: str) -> Behaviour:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._call(method, request, context)

        return forward

    def _repository(self, method: str) -> Behaviour:
        async def guarded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if self._key is None:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "loading and unloading models is not allowed: model-control mode is NONE on this server",
                )
            given = dict(context.invocation_metadata() or ()).get(CONTROL_HEADER, "")
            if not secrets.compare_digest(str(given).encode(), str(self._key).encode()):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"This API is restricted, expecting header '{CONTROL_HEADER}' (serve printed it)",
                )
            answer = await self._call(method, request, context)
            self._configs.forget()
            return answer

        return guarded

    async def _call(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            answer: bytes = await self._channel.unary_unary(method)(
                request, metadata=_metadata(context), timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")
        return answer

    async def _infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await self.check(request)
        except Refused as e:
            await context.abort(STATUS.get(e.status, grpc.StatusCode.UNAVAILABLE), str(e))
        return await self._call(INFER, request, context)

    async def check(self, request: bytes) -> None:
        """Refused unless the serialized ModelInferRequest is one Triton can take safely."""
        try:
            message = self._pb.ModelInferRequest.FromString(request)
        except Exception:  # protobuf's DecodeError, whichever implementation
            raise Refused("the request is not a ModelInferRequest") from None
        spec = await self._configs.get(_quote(message.model_name), _quote(message.model_version))
        raw = list(message.raw_input_contents)
        if raw and len(raw) != len(message.inputs):
            raise Refused(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
        inputs = [self._input(tensor, raw[i] if raw else None) for i, tensor in enumerate(message.inputs)]
        outputs = [OutputTensor(o.name, _parameters(o.parameters)) for o in message.outputs]
        check_request(spec, inputs, outputs, _parameters(message.parameters), self._limits)

    def _input(self, tensor: Any, raw: bytes | None) -> InputTensor:
        given = [field.name for field, _ in tensor.contents.ListFields()]
        expected = CONTENTS.get(tensor.datatype)
        if raw is not None and given:
            raise Refused(f"input {tensor.name!r} has both raw_input_contents and typed contents")
        if raw is None and any(name != expected for name in given):
            raise Refused(f"input {tensor.name!r} ({tensor.datatype[:20]}) carries {given[0]}")
        values = len(getattr(tensor.contents, expected)) if raw is None and expected else None
        return InputTensor(
            tensor.name,
            tensor.datatype,
            list(tensor.shape),
            values=values,
            raw=raw,
            parameters=_parameters(tensor.parameters),
        )

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Each request checked; a refused one answered on the stream with its error, as Triton answers its own."""
        call = self._channel.stream_stream(STREAM)(metadata=_metadata(context), timeout=context.time_remaining())
        answers: asyncio.Queue[bytes | grpc.aio.AioRpcError | None] = asyncio.Queue()
        tasks = [
            asyncio.ensure_future(self._stream_in(requests, call, answers)),
            asyncio.ensure_future(_stream_out(call, answers)),
        ]
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, grpc.aio.AioRpcError):
                    await context.abort(answer.code(), answer.details() or "")
                yield answer
        finally:
            for task in tasks:
                task.cancel()
            call.cancel()

    async def _stream_in(self, requests: AsyncIterator[bytes], call: Any, answers: asyncio.Queue) -> None:
        async for request in requests:
            try:
                await self.check(request)
            except Refused as e:
                await answers.put(self._pb.ModelStreamInferResponse(error_message=str(e)).SerializeToString())
                continue
            await call.write(request)
        await call.done_writing()


async def _stream_out(call: Any, answers: asyncio.Queue) -> None:
    try:
        while (answer := await call.read()) is not grpc.aio.EOF:
            await answers.put(answer)
    except grpc.aio.AioRpcError as e:
        await answers.put(e)
    finally:
        await answers.put(None)


async def _denied(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(
        grpc.StatusCode.PERMISSION_DENIED, "this API is closed on this server (shared memory, logging and trace)"
    )
    raise AssertionError("unreachable")


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    """The client's metadata for Triton, less what the transport sets itself."""
    return tuple(
        (str(key), value)
        for key, value in context.invocation_metadata() or ()
        if not str(key).startswith((":", "grpc-")) and key != "user-agent"
    )


def _parameters(parameters: Any) -> dict[str, object]:
    """A map of InferParameter as Python values (bool, int, str, float); an unset one as None."""
    out: dict[str, object] = {}
    for name, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        out[name] = getattr(parameter, which) if which else None
    return out


def _quote(name: str) -> str:
    import urllib.parse

    return urllib.parse.quote(name, safe="")
