"""The validating front: what clients reach, on the public HTTP and gRPC ports, with Triton behind it on private
loopback ports.

Triton 2.51 dies of some requests (a shape whose element count overflows its arithmetic, the classification
extension on a BYTES output), and it serves APIs that no client of ours needs (shared memory, logging, trace) and
that can break it. So every request passes through here first (front_http.py, front_grpc.py): inference requests
are held against the model's config (front_checks.py) and refused in one line when they are outside it; the APIs
clients need are passed on as they are; the others are answered 403 / PERMISSION_DENIED without reaching Triton.
The model-repository's load and unload, open only with `serve --allow-model-control`, need the run's key, checked
here.

It runs an asyncio loop in a thread of the serving process (aiohttp for HTTP, grpc.aio for gRPC): messages are
passed as bytes, and only the requests' headers and shapes are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

from vitexport.errors import ServingError
from vitexport.serving.front_checks import Limits

__all__ = ["Front", "FrontAddresses", "Limits"]

# Triton's own gRPC limits are INT32_MAX; the front's are the request cap (and answers as large as Triton sends).
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class FrontAddresses:
    """Where the front listens (host and public ports; 0: any free port) and where Triton does (host:port)."""

    host: str
    http_port: int
    grpc_port: int
    triton_http: str
    triton_grpc: str
    limits: Limits = field(default_factory=Limits)


class Front:
    """start() binds the public ports and serves until stop(); both from any thread."""

    def __init__(self, addresses: FrontAddresses, *, control_key: str | None = None):
        self.addresses = addresses
        self._key = control_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Any] = []
        self.http_port = addresses.http_port
        self.grpc_port = addresses.grpc_port

    def start(self, timeout: float = 30.0) -> Front:
        """Listening on return; ServingError in one line when a port cannot be bound."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vitexport-front", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout)
        except (OSError, RuntimeError) as e:  # grpc's failed bind is a RuntimeError
            self.stop()
            a = self.addresses
            raise ServingError(
                f"the front cannot listen on {a.host} ports {a.http_port}/{a.grpc_port} (already in use?): {e}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    async def _open(self) -> None:
        import aiohttp
        import grpc
        from aiohttp import web

        from vitexport.serving.front_grpc import GrpcFront
        from vitexport.serving.front_http import ConfigCache, HttpFront

        a = self.addresses
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,  # Triton's compressed answers go back compressed, as the client asked
            skip_auto_headers=("Accept-Encoding",),  # and only when the client asked (aiohttp asks for gzip itself)
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        self._closers.append(session.close)
        configs = ConfigCache(session, a.triton_http)
        runner = web.AppRunner(HttpFront(session, configs, a.triton_http, a.limits, self._key).app(), access_log=None)
        await runner.setup()
        self._closers.append(runner.cleanup)
        site = web.TCPSite(runner, a.host, a.http_port, reuse_address=True)
        await site.start()
        if not self.http_port:
            self.http_port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        channel = grpc.aio.insecure_channel(
            a.triton_grpc,
            options=[("grpc.max_send_message_length", UNLIMITED), ("grpc.max_receive_message_length", UNLIMITED)],
        )
        self._closers.append(channel.close)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", a.limits.max_request_bytes),
                ("grpc.max_send_message_length", UNLIMITED),
                ("grpc.so_reuseport", 0),  # a port another server holds is a failed start, not a shared one
            ]
        )
        server.add_generic_rpc_handlers((GrpcFront(channel, configs, a.limits, self._key),))
        host = f"[{a.host}]" if ":" in a.host else a.host
        self.grpc_port = server.add_insecure_port(f"{host}:{a.grpc_port}")
        await server.start()
        self._closers.append(lambda: server.stop(grace=2))

    def stop(self) -> None:
        """Stop listening, close the connections to Triton, end the thread. Safe to call twice."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        closers, self._closers = self._closers[::-1], []

        async def close() -> None:
            for closer in closers:
                with contextlib.suppress(Exception):
                    await closer()
            # Handlers of connections still open (keep-alive, a stream): ended here, not left to a closed loop.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5) if tasks else None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
