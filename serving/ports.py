"""The TCP addresses a Triton server listens on: its three ports, picked free or checked free before it starts, and
the host checked to be one this machine has."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

from vitexport.errors import ServingError


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def arguments(self) -> list[str]:
        """tritonserver's listening flags."""
        return [
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
        ]


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel reports free right now; all bound at once so they are distinct."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def check_host(host: str) -> str:
    """The address to listen on, refused in one line when it is not one this machine has (Triton would start and
    then fail to bind, after minutes of loading)."""
    try:
        for *_, address in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
            ip = str(address[0])  # an IPv4 or IPv6 address (AF_INET, AF_INET6 are the families asked for)
            with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
                s.bind((ip, 0))
            return host
    except (OSError, UnicodeError) as e:  # UnicodeError: a name IDNA cannot encode
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise ServingError(f"cannot listen on --host {host!r}: {reason}") from None
    raise ServingError(f"cannot listen on --host {host!r}: it resolves to no address")


def check_free(host: str, ports: dict[str, int]) -> None:
    """Refuse ports something already listens on, before Triton starts: a server already on the HTTP port would
    answer our readiness check and we would call a failed start ready."""
    for what, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # our own closed server's TIME_WAIT is no owner
            try:
                s.bind((host, port))
            except OSError:
                raise ServingError(f"the {what} port {port} on {host} is in use (another server?)") from None
