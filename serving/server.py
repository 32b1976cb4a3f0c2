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
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitexport.errors import ServingError
from vitexport.fileio import left_by_a_dead_process
from vitexport.serving import config as cfg
from vitexport.serving.repository import scan

SHM_DIR = Path("/dev/shm")
_WORKDIR_PREFIX = "vitexport-triton-"
STUB = "triton_python_backend_stub"
_LOCAL_PLATFORMS = {"ensemble"}  # platforms this build serves without a backend library
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


@dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel keeps the server, the Python backend, the stubs and their libraries."""

    server: Path
    python_backend: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServingError("Triton is not installed: pip install 'vitexport[serve]' (nvidia-pytriton)")
        root = Path(spec.submodule_search_locations[0]) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            server=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (install.server, install.python_backend, install.stub, install.libs):
            if not path.exists():
                raise ServingError(f"the nvidia-pytriton install lacks {path} (Python {version} supported?)")
        return install


def free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel reports free right now; all bound at once so they are distinct."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def unavailable_reason(name: str, configs: dict[str, cfg.pb.ModelConfig], _seen: frozenset = frozenset()) -> str | None:
    """Why a model cannot load on this local Triton (None: it can)."""
    config = configs.get(name)
    if config is None:
        return "not in the repository"
    if config.platform == "ensemble":
        if name in _seen:
            return "ensemble refers to itself"
        for step in config.ensemble_scheduling.step:
            reason = unavailable_reason(step.model_name, configs, _seen | {name})
            if reason:
                return f"step {step.model_name}: {reason}"
        return None
    if config.backend != "python":
        kind = f'platform "{config.platform}"' if config.platform else f'backend "{config.backend}"'
        return f"{kind} has no backend in this Triton build; serve it with the official Triton container"
    runtime = cfg.parameter(config, "runtime")
    if runtime and importlib.util.find_spec(runtime) is None:
        return f"the Python backend model needs {runtime}, which is not installed here"
    return None


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


def with_steps(models: Sequence[str], configs: dict[str, cfg.pb.ModelConfig]) -> list[str]:
    """The models and every model their ensembles' steps run, each once: what a server in model-control mode NONE
    must find in its repository (it loads what is there, and nothing on demand)."""
    out: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        out.append(name)
        for step in configs[name].ensemble_scheduling.step if configs[name].platform == "ensemble" else ():
            visit(step.model_name)

    for m in models:
        visit(m)
    return out


def _remove_orphaned_workdirs() -> None:
    """Remove the work folders (backend links, log) of servers whose owner was killed before it could clean up;
    the owner's pid is in the folder's name."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        if left_by_a_dead_process(folder.name[len(_WORKDIR_PREFIX) :].split("-", 1)[0]):
            shutil.rmtree(folder, ignore_errors=True)


def _remove_orphaned_regions() -> None:
    """Remove the Python backend's shared-memory regions of servers whose owner died before it could clean up (they
    hold request bytes); the owner's pid is in our prefix, vitexport_<pid>_."""
    for region in SHM_DIR.glob("vitexport_*_*"):
        if left_by_a_dead_process(region.name.split("_")[1]):
            with contextlib.suppress(OSError):
                region.unlink()


def _in_child() -> None:
    """In the child before exec: files Triton and its stubs create are private to this user (umask 077; their
    shared-memory regions are created 0644 regardless, and `_private_regions` changes those); and SIGTERM when the
    process (thread) that started Triton dies, even by SIGKILL, so that a killed `vitexport serve` leaves no server
    behind (Linux only; elsewhere stop() is the only guard)."""
    import ctypes

    os.umask(0o077)
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Stub:
    """A Python backend stub process: one per model instance (`<model>_<group>_<index>`)."""

    pid: int
    model: str
    instance: str


def proc_stat(pid: int | str) -> tuple[str, str, int]:
    """(command name, state, parent pid) of a process, from /proc/PID/stat (OSError: no such process). The name
    sits in parentheses and may hold spaces and parentheses itself, hence the last ")"."""
    comm, rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    state, ppid = rest.split()[:2]
    return comm.split("(", 1)[1], state, int(ppid)


def _alive(pid: int) -> bool:
    """Running, not a zombie its parent has yet to reap."""
    try:
        return proc_stat(pid)[1] != "Z"
    except OSError:
        return False


def stubs_of(server_pid: int) -> tuple[list[Stub], list[int]]:
    """The instance stubs a tritonserver runs, from /proc, and the pids of its stubs that died unreaped (zombies,
    whose command line is gone). A stub's arguments are the model file (<repository>/<model>/<version>/model.py),
    the shm region, two sizes, the parent's pid, the backend folder, the IPC handle, the instance name and the
    runtime. Stubs named as the model itself are the short-lived ones that auto-complete its config, not an
    instance; Triton reaps those as they exit."""
    alive, dead = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, state, ppid = proc_stat(entry.name)
            if ppid != server_pid or not STUB.startswith(comm):  # comm: the first 15 characters
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        if state == "Z":
            dead.append(int(entry.name))
        elif len(argv) > 8 and argv[8] != (model := Path(argv[1]).parent.parent.name):
            alive.append(Stub(int(entry.name), model, argv[8]))
    return alive, dead


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
        _remove_orphaned_workdirs()
        _remove_orphaned_regions()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        backends = self._workdir / "backends"
        self._backend_dir(install, backends / "python")
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

    def _backend_dir(self, install: TritonInstall, target: Path) -> None:
        # The stub must sit in the backend folder itself; symlinks keep this cheap.
        target.mkdir(parents=True)
        for source in (
            install.python_backend / "libtriton_python.so",
            install.python_backend / "triton_python_backend_utils.py",
            install.stub,
        ):
            (target / source.name).symlink_to(source)

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

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        # The stub links libpython: without this interpreter's LIBDIR it picks the system's (another patch
        # release) and fails oddly; without the wheel's libs it dies and the server hangs.
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub runs the first `python3` on PATH's environment: this venv's, not sys.executable resolved.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return env

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
                env=self._environment(install),
                start_new_session=True,
                preexec_fn=_in_child,
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
            if _alive(stub.pid):
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
