"""A real Triton Inference Server (2.51, from the nvidia-pytriton wheel) on a vitexport model repository.

`TritonServer` assembles what the wheel's `tritonserver` needs to run our own repository: a
backend folder holding the Python backend and the stub for this interpreter, LD_LIBRARY_PATH with this
interpreter's LIBDIR and the wheel's bundled libraries, and this venv's bin first on PATH so that the stubs
import the same packages. It loads only the models whose backend runs here, waits until the server is ready, and on
exit stops it, its stub processes and the shared-memory regions it created.

Nobody changes what it serves, by default: Triton runs in model-control mode NONE on a private view of the
repository (links to the models it serves), so its load and unload APIs refuse every request. A load request can
carry a config and files, which is running code as the server's user, and any web page can POST to localhost. With
`model_control=True` the APIs are on (explicit mode) behind a per-run key that Triton itself checks
(`--http-restricted-api` / `--grpc-restricted-protocol` for the model-repository protocol).

A backend that dies is noticed: Triton neither restarts a Python backend stub that was killed nor says so (health,
model readiness and the index stay READY while every request gets a 500, and a stub killed as it starts hangs the
load for good). So the server watches the stub processes it started (`check_backends`), and a dead one ends the
start, or the serving, with one error naming the model. It is not reloaded: in mode NONE nothing can be, and a
restart of the whole server is its supervisor's job (systemd, Kubernetes), which sees `serve` exit non-zero.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitexport.errors import ServingError
from vitexport.serving.install import TritonInstall, unavailable_reason, with_steps
from vitexport.serving.processes import (
    SHM_DIR,
    WORKDIR_PREFIX,
    Stub,
    in_child,
    process_alive,
    remove_orphaned_regions,
    remove_orphaned_workdirs,
    stubs_of,
)
from vitexport.serving.repository import scan

# The server's names; stubs_of and unavailable_reason (processes.py, install.py) too, for callers that ask the server.
__all__ = ["CONTROL_HEADER", "SHM_DIR", "Endpoints", "TritonServer", "free_ports", "stubs_of", "unavailable_reason"]

CONTROL_HEADER = "vitexport-control-key"  # the header Triton asks of model-repository requests (model_control=True)


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


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel reports free right now; all bound at once so they are distinct."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def _check_host(host: str) -> str:
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


class TritonServer:
    """Context manager: start Triton on a repository, wait until ready, and stop it cleanly on exit."""

    def __init__(
        self,
        repo_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        models: Sequence[str] | None = None,
        startup_timeout: float = 120.0,
        log_verbose: int = 0,
        model_control: bool = False,
    ):
        self.repo_dir = Path(repo_dir).resolve()
        self.host = _check_host(host)
        for what, port in zip(("HTTP", "gRPC", "metrics"), (http_port, grpc_port, metrics_port), strict=True):
            if port is not None and not 1 <= port <= 65535:
                raise ServingError(f"the {what} port must be 1..65535 (or 0: any free port), not {port}")
        self._ports = (http_port, grpc_port, metrics_port)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        configs = scan(self.repo_dir)
        wanted = list(models) if models else list(configs)
        unknown = [m for m in wanted if m not in configs]
        if unknown:
            raise ServingError(f"not in {self.repo_dir}: {', '.join(unknown)} (it has {', '.join(configs) or 'none'})")
        reasons = {m: unavailable_reason(m, configs) for m in wanted}
        self.models = tuple(m for m, r in reasons.items() if r is None)
        self.skipped = {m: r for m, r in reasons.items() if r is not None}  # model -> why it is not loaded here
        self._loaded = with_steps(self.models, configs)
        # model_control: the key load/unload/index requests must carry in the CONTROL_HEADER header; None: closed.
        self.control_key = secrets.token_urlsafe(32) if model_control else None
        self.endpoints: Endpoints | None = None
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._shm_prefix = f"vitexport_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._stubs: dict[int, Stub] = {}  # every instance stub seen since the start, by pid
        self._unknown_dead: set[int] = set()  # stubs seen only dead, at the previous check

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        if self._proc is not None:
            raise ServingError("the server is already running")
        install = TritonInstall.find()
        remove_orphaned_workdirs()
        remove_orphaned_regions()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        backends = self._workdir / "backends"
        install.backend_dir(backends / "python")
        self._repository = self.repo_dir if self.control_key else self._repository_view(self._workdir / "repository")
        auto_ports = None in self._ports
        # Free ports can be taken by another process between our check and Triton's bind: retry with new ones.
        for attempt in range(3 if auto_ports else 1):
            picked = iter(free_ports(self.host, 3))
            ports = [p if p is not None else next(picked) for p in self._ports]
            given = zip(("HTTP", "gRPC", "metrics"), self._ports, strict=True)
            check_free(self.host, {what: port for what, port in given if port is not None})
            self.endpoints = Endpoints(self.host, *ports)
            try:
                self._launch(install, backends, attempt)
                self._wait_ready()
                return self
            except ServingError:
                log = self.log_tail()
                self.stop(keep_workdir=True)
                if "already in use" not in log or attempt == 2 or not auto_ports:
                    self._cleanup_workdir()
                    raise
            except BaseException:  # Ctrl-C or SIGTERM while starting: __exit__ will not run, so stop here
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _repository_view(self, view: Path) -> Path:
        """A folder of links to the models this server loads (ensembles with their steps): in mode NONE Triton loads
        all it finds, so the view is how a subset is served with the repository APIs closed."""
        view.mkdir()
        for name in self._loaded:
            (view / name).symlink_to(self.repo_dir / name, target_is_directory=True)
        return view

    def _model_control(self) -> list[str]:
        if self.control_key is None:
            return ["--model-control-mode=none"]
        restricted = f"model-repository:{CONTROL_HEADER}={self.control_key}"
        return [
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",  # 2.51's name for the gRPC side of the same setting
        ]

    def _launch(self, install: TritonInstall, backends: Path, attempt: int) -> None:
        assert self.endpoints is not None and self._workdir is not None
        e = self.endpoints
        command = [
            str(install.server),
            f"--model-repository={self._repository}",
            f"--backend-directory={backends}",
            f"--http-address={e.host}",
            f"--http-port={e.http_port}",
            f"--grpc-address={e.host}",
            f"--grpc-port={e.grpc_port}",
            f"--metrics-address={e.host}",
            f"--metrics-port={e.metrics_port}",
            *self._model_control(),
            # Our own prefix lets stop() remove exactly the regions this server made, not other servers' ones.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            # gRPC keeps 8 messages for reuse at their largest: 170 MB stayed after a 124 MB request (43 MB without).
            "--grpc-infer-allocation-pool-size=0",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
        ]
        self._stubs, self._unknown_dead = {}, set()  # a new server: new stubs
        self._log_path = self._workdir / f"tritonserver.{attempt}.log"
        with open(self._log_path, "wb") as log:
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop Triton in order.
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # glibc's arena per thread made tritonserver creep (docs/reliability.md); an operator's setting wins
                env={"MALLOC_ARENA_MAX": "2"} | install.environment(),
                start_new_session=True,
                preexec_fn=in_child,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise ServingError(f"tritonserver exited with code {code} while starting: {self.log_error()}")
            self._private_regions()
            self.check_backends(starting=True)
            if self.is_ready():
                self._private_regions()
                self.check_backends(starting=True)
                return
            time.sleep(0.2)
        raise ServingError(f"tritonserver was not ready after {self.startup_timeout:.0f} s: {self.log_error()}")

    def check_backends(self, *, starting: bool = False) -> None:
        """Raise ServingError naming the model when a stub this server started has died (killed, out of memory):
        Triton would go on calling itself ready. New stubs (an instance starting) join the watch."""
        if self._proc is None:
            return
        alive, dead = stubs_of(self._proc.pid)
        self._stubs.update((s.pid, s) for s in alive if s.pid not in self._stubs)
        running = {(s.model, s.instance) for s in alive}
        for stub in list(self._stubs.values()):
            if process_alive(stub.pid):
                continue
            # With model control on, the key's holder may unload a model (its stubs end, it is no longer ready) or
            # load it again (new stubs of the same instances replace the old). A killed stub leaves it ready. Without
            # model control nothing can unload a model, and a readiness question that timed out on a busy machine
            # (None) is no answer: either way the stub died.
            replaced = (stub.model, stub.instance) in running
            if self.control_key and not starting and (replaced or self._model_ready(stub.model) is False):
                del self._stubs[stub.pid]
            else:
                which = f"the backend process of model {stub.model} (instance {stub.instance}, pid {stub.pid})"
                raise self._died(which, starting)
        # Killed before we saw it run (as it started: then Triton waits for it for ever). Dead at two checks in a row,
        # so not a stub that exited normally and is being reaped; its model is one still loading.
        unknown = set(dead) - set(self._stubs)
        for pid in unknown & self._unknown_dead:
            raise self._died(f"a backend process (pid {pid}) of model {', '.join(self._not_ready()) or '?'}", starting)
        self._unknown_dead = unknown

    def _died(self, which: str, starting: bool) -> ServingError:
        # Triton's reason, when it logged one (a model.py that fails to import, say); a killed stub leaves none.
        reason = self.log_error(errors_only=True)
        return ServingError(
            f"{which} died {'while loading' if starting else 'while serving'}"
            f"{f' ({reason})' if reason else ''}; stopping the server (Triton does not restart it)"
        )

    def _not_ready(self) -> list[str]:
        """The Python-backend models being served that Triton does not call ready."""
        configs = scan(self._repository)
        python = [m for m in self._loaded if configs[m].backend == "python"]
        # Not asked (None) counts as not ready: while the models load, Triton's HTTP endpoint is not up yet.
        return [m for m in python if not self._model_ready(m)]

    def _model_ready(self, model: str) -> bool | None:
        """Triton's answer (a 4xx: not ready), or None when it gave none (timed out, connection refused)."""
        assert self.endpoints is not None
        try:
            with urllib.request.urlopen(f"http://{self.endpoints.http}/v2/models/{model}/ready", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False
        except (urllib.error.URLError, OSError):
            return None

    def _private_regions(self) -> None:
        """Owner-only access to the Python backend's shared-memory regions (they hold request bytes): the backend
        creates them 0644 whatever the umask, so they are changed as they appear while the models load. Each stub
        makes its region when it starts, so after ready there are no new ones until a stub is restarted."""
        for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.chmod(0o600)

    def is_ready(self) -> bool:
        if self.endpoints is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.endpoints.http}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        path = getattr(self, "_log_path", None)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_error(self, *, errors_only: bool = False) -> str:
        """The server log's last error line (glog's `E` lines), for a one-line message; else its last line (or "",
        `errors_only`). The CUDA complaints of this GPU-less machine are not the error."""
        lines = [line for line in self.log_tail(200).splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"E\d{4} ", line) and "CudaDriverHelper" not in line]
        if errors_only and not errors:
            return ""
        line = (errors or lines or ["no log output"])[-1]
        return re.sub(r"^[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", line).strip().strip('"')

    def stop(self, *, keep_workdir: bool = False) -> None:
        """SIGTERM (Triton unloads its models and the stubs exit), then SIGKILL whatever is left of the group."""
        proc, self._proc = self._proc, None
        # Nested finally blocks: a second Ctrl-C (or SIGTERM) while Triton shuts down cuts the wait short but must
        # not skip the kill and the cleanup after it; the interrupt propagates once they are done.
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
        finally:
            try:
                if proc is not None:
                    # The stubs share the server's process group (its own session): nothing of it may outlive us.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
            finally:
                for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
                    region.unlink(missing_ok=True)
                if not keep_workdir:
                    self._cleanup_workdir()

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def process_group(self) -> int | None:
        return self._proc.pid if self._proc is not None else None
