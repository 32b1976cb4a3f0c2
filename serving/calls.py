"""Talking to a Triton server over HTTP or gRPC with tritonclient (imported lazily): the protocol, connections that
close, and each call bounded by a timeout and failing in one line. What the served models answer is client.py's."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

import numpy as np

from vitexport.errors import ServingError, first_line
from vitexport.serving import config as cfg

# Seconds to wait for a connection and for each reply: long enough for a large batch on a busy CPU server, short
# enough that a server that accepted the connection but hangs does not hang the client forever.
DEFAULT_TIMEOUT = 60.0


class Protocol(str, Enum):
    http = "http"
    grpc = "grpc"

    @property
    def default_url(self) -> str:
        return "localhost:8000" if self is Protocol.http else "localhost:8001"


def parse_protocol(value: Protocol | str) -> Protocol:
    try:
        return Protocol(value)
    except ValueError:
        raise ServingError(f"protocol must be http or grpc, not {value!r}") from None


def connect(url: str, protocol: Protocol | str = Protocol.http, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Any]:
    """A tritonclient InferenceServerClient for the protocol, and its module (for InferInput). Close it when done
    (or use `connection`): an idle open connection makes the server wait its whole exit timeout when it stops.

    The HTTP client gets `timeout` for connecting and for each reply; gRPC takes it per call (`call_options`)."""
    protocol = parse_protocol(protocol)
    url = re.sub(r"^https?://", "", url)
    _check_url(url)
    if protocol is Protocol.http:
        module = cfg.import_tritonclient("tritonclient.http")
        options = {"connection_timeout": timeout, "network_timeout": timeout}
    else:
        module = cfg.import_tritonclient("tritonclient.grpc")
        options = {}
    try:
        return module.InferenceServerClient(url=url, **options), module
    except Exception as e:  # tritonclient raises plain exceptions for malformed URLs
        raise ServingError(f"cannot connect to {url}: {e}") from None


def _check_url(url: str) -> None:
    """HOST:PORT, refused here in one line: tritonclient's own failure also prints a traceback from its destructor."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(f"//{url}")
        parts.port  # noqa: B018 (parsing it is the check: ValueError outside 0..65535 or not a number)
    except ValueError as e:
        raise ServingError(f"cannot connect to {url}: {e} (give HOST:PORT)") from None
    if not parts.hostname:
        raise ServingError(f"cannot connect to {url}: no host (give HOST:PORT)")


@contextlib.contextmanager
def connection(
    url: str, protocol: Protocol | str = Protocol.http, *, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[tuple[Any, Any]]:
    """`connect`, closed on exit."""
    client, module = connect(url, protocol, timeout=timeout)
    try:
        yield client, module
    except _NotTriton as e:  # an HTTP reply that is not Triton's API: Triton's metrics port, or its own reply
        if _is_metrics_port(url, timeout):
            raise ServingError(
                f"{e.what}: {url} is Triton's metrics port, not its HTTP API (8000 by default)"
            ) from None
        raise
    finally:
        client.close()


class _NotTriton(ServingError):
    """A reply that is HTTP but may not be Triton's API (an empty 200, a 404, a 405); `connection` looks at what
    answered."""

    def __init__(self, what: str, detail: str):
        super().__init__(f"{what}: {detail}")
        self.what = what


def _is_metrics_port(url: str, timeout: float) -> bool:
    """Whether `url` is Triton's metrics port, which answers an empty 200 or a 405 to the API's paths."""
    import urllib.request

    host = re.sub(r"^https?://", "", url).split("/", 1)[0]
    try:
        with urllib.request.urlopen(f"http://{host}/metrics", timeout=min(timeout, 5)) as r:
            text = r.read(1 << 20).decode(errors="replace")
    except (OSError, ValueError):
        return False
    return re.search(r"^# (HELP|TYPE) nv_", text, re.MULTILINE) is not None


def call_options(protocol: Protocol | str, timeout: float) -> dict[str, float]:
    """Keyword arguments that bound one gRPC call to `timeout` seconds (HTTP clients carry theirs from `connect`)."""
    return {"client_timeout": timeout} if parse_protocol(protocol) is Protocol.grpc else {}


def call(what: str, timeout: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a tritonclient call, turning its errors (a timeout included) into one-line ServingErrors."""
    from http.client import HTTPException

    from tritonclient.utils import InferenceServerException

    try:
        return fn(*args, **kwargs)
    except InferenceServerException as e:
        if str(e.status()).endswith("DEADLINE_EXCEEDED"):
            raise ServingError(f"{what}: no reply within {timeout:g} s") from None
        message = e.message() or str(e)
        if str(e.status()) in ("404", "405"):  # Triton's API answers its errors as 400s with a JSON body
            raise _NotTriton(what, message) from None
        if "Socket closed" in message or "http1.x server" in message:  # something listens there, not speaking gRPC
            message += " (not a gRPC port? try --protocol http)"
        raise ServingError(f"{what}: {message}") from None
    except ValueError as e:  # tritonclient's JSON decoder: an HTTP reply whose body is not Triton's JSON
        raise _NotTriton(what, f"no Triton HTTP API there (its reply is not Triton's JSON: {first_line(e)})") from None
    except HTTPException:  # geventhttpclient's parser: the reply was not HTTP, as a gRPC port's is not
        raise ServingError(f"{what}: the reply is not HTTP (a gRPC port? try --protocol grpc)") from None
    except TimeoutError:
        raise ServingError(f"{what}: no reply within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise ServingError(f"{what}: {e}") from None


def model_config(
    url: str, model: str, *, protocol: Protocol | str = Protocol.http, timeout: float = DEFAULT_TIMEOUT
) -> cfg.pb.ModelConfig:
    """The config Triton serves for a model, as a ModelConfig message whichever the protocol."""
    from google.protobuf import json_format

    with connection(url, protocol, timeout=timeout) as (client, _):
        what = f"cannot read {model}'s config from {url}"
        data = call(what, timeout, client.get_model_config, model, **call_options(protocol, timeout))
    if Protocol(protocol) is Protocol.grpc:
        return data.config
    return json_format.ParseDict(data, cfg.pb.ModelConfig(), ignore_unknown_fields=True)


def ready_models(url: str, *, protocol: Protocol | str = Protocol.http, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    with connection(url, protocol, timeout=timeout) as (client, _):
        what = f"cannot reach Triton at {url}"
        index = call(what, timeout, client.get_model_repository_index, **call_options(protocol, timeout))
    if Protocol(protocol) is Protocol.grpc:
        return [m.name for m in index.models if m.state == "READY"]
    return [m["name"] for m in index if m.get("state") == "READY"]


def infer(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    *,
    protocol: Protocol | str = Protocol.http,
    timeout: float = DEFAULT_TIMEOUT,
    parameters: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """One inference request with numpy inputs (object arrays for strings) and request parameters; returns the
    named outputs."""
    from tritonclient.utils import np_to_triton_dtype

    with connection(url, protocol, timeout=timeout) as (client, module):
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [module.InferRequestedOutput(name) for name in outputs]
        options: dict[str, Any] = call_options(protocol, timeout)
        if parameters:
            options["parameters"] = parameters
        result = call(
            f"{model} refused the request", timeout, client.infer, model, tensors, outputs=requested, **options
        )
    return [result.as_numpy(name) for name in outputs]


def read_metrics(metrics_url: str) -> dict[tuple[str, str], float]:
    """Triton's Prometheus counters summed per (metric, model): e.g. ("nv_inference_exec_count", "deit")."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        raise ServingError(f"cannot read metrics from {metrics_url}: {e}") from None
    totals: dict[tuple[str, str], float] = {}
    for match in re.finditer(r'^(\w+)\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$', text, re.MULTILINE):
        key = (match.group(1), match.group(2))
        totals[key] = totals.get(key, 0.0) + float(match.group(3))
    return totals
