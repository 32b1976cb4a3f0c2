"""Who can reach Triton, and as whom it runs.

**Private endpoints** (`TritonServer(private=True)`). Triton listens on no TCP port at all: its HTTP, gRPC and
metrics services are Unix sockets in the server's work folder (`PrivateEndpoints`: `<workdir>/sockets/http`,
`grpc:1`, `metrics`; tritonserver appends `:<port>` to a gRPC Unix address, evhtp does not). The work folder is
0700 and the sockets 0600 (umask 077), so only the user Triton runs as and root can connect: any other local user
gets EACCES, whatever key they read from a command line in /proc. The validating front (serving/front.py) is what
listens on the public ports and reaches Triton through these paths:

- HTTP and metrics: `unix_http(path)` is an `http.client.HTTPConnection` over the socket (`endpoints.http_socket`,
  `endpoints.metrics_socket`); `http_status(endpoints.http, "/v2/health/ready")` asks one question.
- gRPC: `grpc.insecure_channel(endpoints.grpc)` (the target is `unix:<path>`, which grpcio dials natively).

No network namespace is needed (considered first: Triton in its own namespace behind a bridge): with no TCP
listener there is nothing to hide, the file system's permissions are the boundary, it works without root, and it
costs no relay hop. In private mode Triton's own restricted-API key is not used: whoever can open the socket
already runs as Triton's user or root; the front checks its own key (`TritonServer.control_key`), which is on no
command line.

**An unprivileged user** (`triton_account()`). When `serve` runs as root, tritonserver and its stubs run as the
system user `vitexport-triton` (created with useradd on first use; `nobody` if that fails), so code a client gets
loaded (model control) or an exploit of Triton runs without root. The work folder (backend links, repository view,
sockets) is handed to that user, and the repository view holds hard links or copies of the model files rather than
links into a folder it may not enter. If that user cannot read what Triton needs (the Python its stubs embed, the
installed packages, PYTHONPATH, the repository), Triton runs as root and `blocked_reason` says why in one line.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ACCOUNT = "vitexport-triton"


@dataclass(frozen=True)
class PrivateEndpoints:
    """Triton's services as Unix sockets in `folder` (the work folder's `sockets`)."""

    folder: Path

    @property
    def http_socket(self) -> Path:
        return self.folder / "http"

    @property
    def grpc_socket(self) -> Path:
        return self.folder / "grpc:1"  # tritonserver appends ":<grpc-port>" to a Unix address

    @property
    def metrics_socket(self) -> Path:
        return self.folder / "metrics"

    @property
    def http(self) -> str:
        return f"unix:{self.http_socket}"

    @property
    def grpc(self) -> str:
        return f"unix:{self.grpc_socket}"

    @property
    def metrics(self) -> str:
        return f"unix:{self.metrics_socket}"

    def arguments(self) -> list[str]:
        """tritonserver's listening flags: the three services on these sockets, no TCP port."""
        return [
            f"--http-address=unix:{self.http_socket}",
            "--http-port=1",
            f"--grpc-address=unix:{self.folder / 'grpc'}",
            "--grpc-port=1",
            f"--metrics-address=unix:{self.metrics_socket}",
            "--metrics-port=1",
        ]


class unix_http(http.client.HTTPConnection):
    """An HTTP connection over a Unix socket (Triton's private HTTP or metrics endpoint)."""

    def __init__(self, path: str | Path, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def http_status(endpoint: str, path: str, timeout: float = 2.0) -> int | None:
    """The status of a GET of `path` at `endpoint` (`host:port` or `unix:<socket>`), or None when no answer came
    (refused, timed out)."""
    if endpoint.startswith("unix:"):
        connection: http.client.HTTPConnection = unix_http(endpoint[len("unix:") :], timeout=timeout)
    else:
        host, _, port = endpoint.rpartition(":")
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def triton_account() -> Account | None:
    """The user Triton runs as when this process is root (None: not root, Triton runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in (ACCOUNT, "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return Account(name, entry.pw_uid, entry.pw_gid)
        if name == ACCOUNT and shutil.which("useradd"):
            command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ACCOUNT]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(command, check=True, capture_output=True, timeout=30)
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(ACCOUNT)
                return Account(ACCOUNT, entry.pw_uid, entry.pw_gid)
    return None


def needed_paths(repo_dir: Path, install_paths: Iterable[Path]) -> list[Path]:
    """What Triton and its stubs read: the Triton install, this interpreter (its LIBDIR and standard library: the
    stub embeds it), the installed packages, PYTHONPATH (which may hold this vitexport) and the repository."""
    paths = [*install_paths, Path(sys.base_prefix), Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix)]
    paths += [Path(p) for p in sys.path if p and Path(p).exists() and not p.endswith(".zip")]
    paths += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [*paths, repo_dir]


def first_blocked(account: Account, paths: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first folder on the way to one of `paths` that `account` (no groups but its own) may not enter, or the
    path it may not read, with that path; None when it can read them all. ACLs are not consulted."""
    for path in paths:
        target = Path(os.path.abspath(path))
        for folder in [*reversed(target.parents), target]:
            try:
                st = folder.stat()
            except OSError:
                break  # gone (a PYTHONPATH entry that does not exist): nothing to read there
            need = stat.S_IXOTH if stat.S_ISDIR(st.st_mode) or folder != target else stat.S_IROTH
            if st.st_uid == account.uid:
                need <<= 6
            elif st.st_gid == account.gid:
                need <<= 3
            if not st.st_mode & need:
                return folder, path
    return None


def blocked_reason(account: Account, paths: Iterable[Path]) -> str | None:
    """Why `account` cannot run Triton on these paths, in one line (None: it can)."""
    blocked = first_blocked(account, paths)
    if blocked is None:
        return None
    folder, path = blocked
    mode = stat.filemode(folder.stat().st_mode)
    return f"user {account.name} cannot enter {folder} ({mode}), on the way to {path}"


def hand_over(folder: Path, account: Account) -> None:
    """The folder and the folders and links in it owned by `account`. Never a regular file: the repository view's
    hard links share their inode with the user's own model files, which must keep their owner (`place` makes its
    copies readable instead; the folder's own mode keeps other users out)."""
    for root, dirs, files in os.walk(folder):
        os.lchown(root, account.uid, account.gid)
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.lchown(path, account.uid, account.gid)


def place(source: Path, target: Path) -> None:
    """A model file in a repository view another user reads: a hard link when everyone may read it (no copy, and
    nothing to enter on the way), else a copy readable by all (inside a folder only Triton's user may enter)."""
    if source.stat().st_mode & stat.S_IROTH:
        with contextlib.suppress(OSError):  # another file system, or hard links protected: copy
            os.link(source, target)
            return
    shutil.copyfile(source, target)
    target.chmod(0o644)


def copy_view(source: Path, target: Path) -> None:
    """A model folder (config, labels, versions) rebuilt under `target` with `place`: what Triton loads, readable
    by its user whatever the modes of the folders above `source`. Caches (`__pycache__`) are left behind."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.name == "__pycache__" or entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir():
            copy_view(entry, target / entry.name)
        elif entry.is_file():
            place(entry, target / entry.name)


def repository_view(repo_dir: Path, names: Sequence[str], view: Path, *, copy: bool) -> Path:
    """A folder of the models a server loads (ensembles with their steps): in mode NONE Triton loads all it finds, so
    the view is how a subset is served with the repository APIs closed. Links, or `copy` (another user, who has no
    way through our folders) copies made by copy_view."""
    view.mkdir()
    for name in names:
        if copy:
            copy_view(repo_dir / name, view / name)
        else:
            (view / name).symlink_to(repo_dir / name, target_is_directory=True)
    return view
