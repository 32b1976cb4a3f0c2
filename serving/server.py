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
start, or the serving, with one error naming the model. It is not reloaded alone (in mode NONE nothing can be):
`restart()` starts the whole server again, on the same endpoints (serving/supervisor.py decides when).

Before Triton loads anything, every model file is checked against its version's sidecar (serving/integrity.py).
`private=True` puts Triton's services on Unix sockets only its user can open, and a `serve` run as root runs Triton
as an unprivileged user (serving/isolation.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from vitexport.errors import ServingError
from vitexport.serving import isolation, triton_log
from vitexport.serving.flags import check_passthrough, response_cache_args
from vitexport.serving.front import Front, Limits
from vitexport.serving.install import TritonInstall, unavailable_reason, with_steps
from vitexport.serving.integrity import verify_repository
from vitexport.serving.ports import Endpoints, check_free, check_host, free_ports
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
        private: bool = False,
        front: Limits | None = Limits(),  # noqa: B008 (frozen) the front's limits; None: none (to measure it)
        extra_args: Sequence[str] = (),  # more tritonserver flags, checked by serving/flags.py (`serve -- ...`)
        response_cache_mb: int = 0,  # Triton's response cache (0: none), used by the configs that enable it
    ):
        self.repo_dir = Path(repo_dir).resolve()
        self.host = check_host(host)
        for what, port in zip(("HTTP", "gRPC", "metrics"), (http_port, grpc_port, metrics_port), strict=True):
            if port is not None and not 1 <= port <= 65535:
                raise ServingError(f"the {what} port must be 1..65535 (or 0: any free port), not {port}")
        self._ports = (http_port, grpc_port, metrics_port)
        self._extra_args = (*response_cache_args(response_cache_mb), *check_passthrough(extra_args))
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
        # Clients reach the validating front (front.py) on the public ports; Triton behind it listens on Unix sockets
        # in its work folder (isolation.PrivateEndpoints), its metrics on the public metrics port. `private` without
        # a front: no TCP port at all. Neither: Triton on the public ports itself (to measure what the front costs).
        self.front_limits = front
        self.private = private or front is not None
        self._front: Front | None = None
        self.endpoints: Endpoints | isolation.PrivateEndpoints | None = None  # what clients use
        self.triton: Endpoints | isolation.PrivateEndpoints | None = None  # where Triton itself answers
        self._ready_at = 0  # the log's length when the server was last ready: later lines are this serving's
        self.account: isolation.Account | None = None  # when we are root: the user Triton runs as (see _run_as)
        self.run_as_root: str | None = None  # why Triton runs as root although we would not have it
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
        verify_repository(self.repo_dir, self._loaded)
        remove_orphaned_workdirs()
        remove_orphaned_regions()
        if self._workdir is None:  # a restart keeps it: private endpoints stay where the front knows them
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        backends = self._workdir / "backends"
        install.backend_dir(backends / "python")
        account = self._run_as(install)
        self._repository = self.repo_dir  # with model control the key's holder loads from the repository itself
        if not self.control_key:
            copy = self.account is not None and not self.run_as_root  # another user: no way through our folders
            view = self._workdir / "repository"
            self._repository = isolation.repository_view(self.repo_dir, self._loaded, view, copy=copy)
        (self._workdir / "sockets").mkdir()
        if account is not None:
            isolation.hand_over(self._workdir, account)
        public = self.front_limits is not None or not self.private  # whether anything listens on TCP
        auto_ports = None in self._ports and public
        # Free ports can be taken by another process between our check and Triton's bind: retry with new ones.
        for attempt in range(3 if auto_ports else 1):
            picked = iter(free_ports(self.host, 3))
            ports = [p if p is not None else next(picked) for p in self._ports]
            given = zip(("HTTP", "gRPC", "metrics"), self._ports, strict=True)
            self.endpoints = self.triton = Endpoints(self.host, *ports)
            if self.private:
                self.triton = isolation.PrivateEndpoints(self._workdir / "sockets")
            if public:  # the front kept across a restart holds its own two ports
                kept = ("HTTP", "gRPC") if self._front is not None else ()
                check_free(self.host, {what: port for what, port in given if port is not None and what not in kept})
            else:  # no TCP port: none to check
                self.endpoints = self.triton
            try:
                self._launch(install, backends, account)
                self._wait_ready()
                self._start_front()
                if isinstance(self.endpoints, Endpoints):  # a restart comes back where clients know it
                    self._ports = (self.endpoints.http_port, self.endpoints.grpc_port, self.endpoints.metrics_port)
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

    def _start_front(self) -> None:
        """The front on the public HTTP and gRPC ports, before Triton's private sockets; ready when it returns."""
        if self.front_limits is None or not isinstance(self.endpoints, Endpoints) or self._front is not None:
            return  # none asked, or the one kept across a restart (the same ports, the same sockets behind it)
        private = self.triton
        assert isinstance(private, isolation.PrivateEndpoints)
        e = self.endpoints
        upstream = (private.http, private.grpc)
        front = Front(e.host, e.http_port, e.grpc_port, self.front_limits, self.control_key, upstream=upstream)
        self._front = front.start()

    def restart(self) -> TritonServer:
        """Stop whatever is left of the server (killed: it is broken) and start it again on the same endpoints."""
        self.stop(kill=True, keep_workdir=True)
        for entry in self._workdir.iterdir() if self._workdir else ():
            if entry.suffix == ".log":  # kept while we run: what each earlier server said before it died
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return self.start()

    def _run_as(self, install: TritonInstall) -> isolation.Account | None:
        """The unprivileged user Triton runs as, when we are root and it can read all Triton needs; else None (as
        us), and `self.run_as_root` says why."""
        self.run_as_root, self.account = None, isolation.triton_account()
        if self.account is None:
            return None
        paths = isolation.needed_paths(self.repo_dir, (install.server, install.stub, install.libs))
        self.run_as_root = isolation.blocked_reason(self.account, paths[:-1] if not self.control_key else paths)
        return None if self.run_as_root else self.account

    def _model_control(self) -> list[str]:
        if self.control_key is None:
            return ["--model-control-mode=none"]
        if self.private:  # the socket's permissions are the boundary; the front checks the key (on no command line)
            return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        restricted = f"model-repository:{CONTROL_HEADER}={self.control_key}"
        return [
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",  # 2.51's name for the gRPC side of the same setting
        ]

    def _launch(self, install: TritonInstall, backends: Path, account: isolation.Account | None) -> None:
        assert self.endpoints is not None and self.triton is not None and self._workdir is not None
        listen = self.triton.arguments()  # TCP ports, or private Unix sockets
        if isinstance(self.triton, isolation.PrivateEndpoints) and isinstance(self.endpoints, Endpoints):
            # Behind the front: HTTP and gRPC private, the metrics (read-only) on the public metrics port.
            listen = [a for a in listen if not a.startswith("--metrics-")] + self.endpoints.arguments()[-2:]
        command = [
            str(install.server),
            f"--model-repository={self._repository}",
            f"--backend-directory={backends}",
            *listen,
            *self._model_control(),
            # Our own prefix lets stop() remove exactly the regions this server made, not other servers' ones.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            # gRPC keeps 8 messages for reuse at their largest: 170 MB stayed after a 124 MB request (43 MB without).
            "--grpc-infer-allocation-pool-size=0",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
            *self._extra_args,
        ]
        self._stubs, self._unknown_dead = {}, set()  # a new server: new stubs
        runs = len(list(self._workdir.glob("tritonserver.*.log")))  # earlier starts' logs (restarts, retries)
        self._log_path, self._ready_at = self._workdir / f"tritonserver.{runs}.log", 0
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
                preexec_fn=in_child,  # after the change of user, which would clear its parent-death signal
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise ServingError(f"tritonserver {triton_log.exit_reason(code)} while starting: {self.log_error()}")
            self._private_regions()
            self.check_backends(starting=True)
            if self.is_ready():
                self._private_regions()
                self.check_backends(starting=True)
                self._ready_at = triton_log.size(self._log_path)
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
        assert self.triton is not None
        status = isolation.http_status(self.triton.http, f"/v2/models/{model}/ready")
        return None if status is None else status == 200

    def _private_regions(self) -> None:
        """Owner-only access to the Python backend's shared-memory regions (they hold request bytes): the backend
        creates them 0644 whatever the umask, so they are changed as they appear while the models load. Each stub
        makes its region when it starts, so after ready there are no new ones until a stub is restarted."""
        for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.chmod(0o600)

    def is_ready(self) -> bool:
        return self.triton is not None and isolation.http_status(self.triton.http, "/v2/health/ready") == 200

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(triton_log.tail(getattr(self, "_log_path", None), lines))

    def log_error(self, *, errors_only: bool = False) -> str:
        """The last error Triton logged in this phase (since it was ready, or since it started), for a one-line
        message; else its last line (or "", `errors_only`). A GPU-less machine's CUDA complaints are not errors."""
        path = getattr(self, "_log_path", None)
        line = triton_log.last_error(path, since=self._ready_at, errors_only=errors_only)
        return line or ("" if errors_only else "no log output")

    def death(self) -> str | None:
        """Why the server stopped, in one line (None: it runs): its exit status or signal and its errors since."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return triton_log.death("tritonserver", self._proc.returncode, self._log_path, since=self._ready_at)

    def stop(self, *, keep_workdir: bool = False, kill: bool = False) -> None:
        """SIGTERM (Triton unloads its models and the stubs exit), then SIGKILL whatever is left of the group;
        `kill`: SIGKILL at once (a server with a dead backend would wait 10 s for the requests it held), the front
        kept on its ports for a restart (a plain stop() then ends it)."""
        proc, self._proc, front = self._proc, None, None if kill else self._front
        self._front = self._front if kill else None
        # Nested finally blocks: a second Ctrl-C (or SIGTERM) while Triton shuts down cuts the wait short but must
        # not skip the kill and the cleanup after it; the interrupt propagates once they are done.
        try:
            if front is not None:  # first: no new requests while Triton shuts down
                front.stop()
            if proc is not None and proc.poll() is None and not kill:
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
