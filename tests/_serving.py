"""Shared by the tests against a real Triton: the two protocols every served answer is checked over, and a server's
address for one of them."""

from __future__ import annotations

PROTOCOLS = ("http", "grpc")


def url(server, protocol: str) -> str:
    return server.endpoints.http if protocol == "http" else server.endpoints.grpc
