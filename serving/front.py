"""The validating front: what clients reach, on the public HTTP and gRPC ports, with Triton behind it on private
Unix sockets (serving/isolation.py) that no other local user can open.

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
import logging
import os
import threading
from typing import Any

from vitexport.errors import ServingError
from vitexport.serving.front_checks import Limits

__all__ = ["Front", "Limits"]

# grpc's fork handlers log "Other threads are currently calling into gRPC, skipping fork() handlers" when this process
# starts one (Triton again, perf_analyzer) while the front is busy; nothing here needs them. Read when grpc is first
# imported, so set on importing this module.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Triton's own gRPC limits are INT32_MAX; the front's are the request cap (and answers as large as Triton sends).
UNLIMITED = 2**31 - 1


class Front:
    """The front on `host`'s public ports (0: any free one) before Triton at `upstream`: its HTTP and gRPC
    addresses, each `unix:<path>` (Triton's private sockets) or `host:port`. start() binds the public ports and
    serves until stop(); both from any thread."""

    def __init__(
        self,
        host: str,
        http_port: int,
        grpc_port: int,
        limits: Limits,
        control_key: str | None = None,
        *,
        upstream: tuple[str, str],
    ):
        self.host, self.http_port, self.grpc_port, self.limits = host, http_port, grpc_port, limits
        self._key = control_key
        self.upstream_http, self.upstream_grpc = upstream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Any] = []
        self._grace = 2.0

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
        # A malformed request (no Host header, half a request line) is answered 400 by aiohttp, which also logs it with
        # its traceback: the client's mistake, not the server's, and `serve` prints no tracebacks.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        import aiohttp
        import grpc
        from aiohttp import web

        from vitexport.serving.front_grpc import GrpcFront
        from vitexport.serving.front_http import ConfigCache, HttpFront

        if self.upstream_http.startswith("unix:"):  # Triton's private socket; the Host header is only a name
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(self.upstream_http[5:], limit=256)
            triton_http = "localhost"
        else:
            connector, triton_http = aiohttp.TCPConnector(limit=256), self.upstream_http
        session = aiohttp.ClientSession(
            connector=connector,
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
            self.upstream_grpc,  # grpc takes `unix:<path>` as it is
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
        self._closers.append(lambda: server.stop(grace=self._grace))

    def stop(self, grace: float = 2.0) -> None:
        """Stop listening, close the connections to Triton, end the thread; requests in flight get `grace` seconds
        (none when Triton is already dead). Safe to call twice."""
        self._grace = grace
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
            await asyncio.wait(tasks, timeout=max(grace, 0.1)) if tasks else None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
