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
import os
import socket
import threading
from typing import Any

from vitexport.errors import ServingError
from vitexport.serving.front_checks import Limits

__all__ = ["Front", "Limits"]

TRITON_HOST = "127.0.0.1"  # where Triton listens behind the front: loopback only
# Triton's own gRPC limits are INT32_MAX; the front's are the request cap (and answers as large as Triton sends).
UNLIMITED = 2**31 - 1


def loopback_ports(count: int) -> list[int]:
    """Ports free on loopback right now, distinct (all bound at once)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((TRITON_HOST, 0))
        return [s.getsockname()[1] for s in socks]


class Front:
    """The front on `host`'s public ports (0: any free one) with Triton's private HTTP and gRPC ports, picked here
    (`triton_http_port`, `triton_grpc_port`, on TRITON_HOST) for Triton to listen on. start() binds the public
    ports and serves until stop(); both from any thread."""

    def __init__(self, host: str, http_port: int, grpc_port: int, limits: Limits, control_key: str | None = None):
        self.host, self.http_port, self.grpc_port, self.limits = host, http_port, grpc_port, limits
        self._key = control_key
        self.triton_http_port, self.triton_grpc_port = loopback_ports(2)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Any] = []

    def start(self, timeout: float = 30.0) -> Front:
        """Listening on return; ServingError in one line when a port cannot be bound."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vitexport-front", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout)
        except (OSError, RuntimeError) as e:  # grpc's failed bind is a RuntimeError
            self.stop()
            raise ServingError(
                f"the front cannot listen on {self.host} ports {self.http_port}/{self.grpc_port} (already in use?): {e}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    async def _open(self) -> None:
        # grpc's fork handlers log "Other threads are currently calling into gRPC, skipping fork() handlers" when this
        # process starts one (Triton again, perf_analyzer) while the front is busy; nothing here needs them.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        import aiohttp
        import grpc
        from aiohttp import web

        from vitexport.serving.front_grpc import GrpcFront
        from vitexport.serving.front_http import ConfigCache, HttpFront

        triton_http = f"{TRITON_HOST}:{self.triton_http_port}"
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,  # Triton's compressed answers go back compressed, as the client asked
            skip_auto_headers=("Accept-Encoding",),  # and only when the client asked (aiohttp asks for gzip itself)
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        self._closers.append(session.close)
        configs = ConfigCache(session, triton_http)
        http = HttpFront(session, configs, triton_http, self.limits, self._key)
        runner = web.AppRunner(http.app(), access_log=None)
        await runner.setup()
        self._closers.append(runner.cleanup)
        site = web.TCPSite(runner, self.host, self.http_port, reuse_address=True)
        await site.start()
        if not self.http_port:
            self.http_port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        channel = grpc.aio.insecure_channel(
            f"{TRITON_HOST}:{self.triton_grpc_port}",
            options=[("grpc.max_send_message_length", UNLIMITED), ("grpc.max_receive_message_length", UNLIMITED)],
        )
        self._closers.append(channel.close)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.limits.max_request_bytes),
                ("grpc.max_send_message_length", UNLIMITED),
                ("grpc.so_reuseport", 0),  # a port another server holds is a failed start, not a shared one
            ]
        )
        server.add_generic_rpc_handlers((GrpcFront(channel, configs, self.limits, self._key),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.grpc_port = server.add_insecure_port(f"{host}:{self.grpc_port}")
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
