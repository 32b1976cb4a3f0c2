"""Triton reachable only by its own user, and never root: a private server listens on no TCP port, its Unix sockets
refuse a second local user (a real account, made here when the tests run as root), and no key on a command line
opens anything; a `serve` run as root runs tritonserver and its stubs as an unprivileged user (uid from /proc)."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vitexport.serving import isolation
from vitexport.serving.install import TritonInstall
from vitexport.serving.repository import add_model
from vitexport.serving.server import TritonServer

PROBE = "vitexport-probe"
SYSTEM_PYTHON = "/usr/bin/python3"  # the second user's interpreter: the venv's may sit in a folder only root enters


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from vitexport.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("isolation")
    add_model(root / "repo", export_onnx("test_vit", root / "test_vit.onnx"))
    return root / "repo"


@pytest.fixture(scope="module")
def probe():
    """A second, unprivileged local user."""
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root (useradd)")
    if not (shutil.which("useradd") and shutil.which("runuser") and Path(SYSTEM_PYTHON).exists()):
        pytest.skip("needs useradd, runuser and /usr/bin/python3")
    try:
        pwd.getpwnam(PROBE)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE], check=True)
    return PROBE


def _as(user: str, code: str) -> str:
    result = subprocess.run(
        ["runuser", "-u", user, "--", SYSTEM_PYTHON, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _group(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


PROBE_CODE = """
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print(path, "connected")
    except OSError as e:
        print(path, errno.errorcode.get(e.errno, e.errno))
"""


def test_a_private_server_is_reachable_by_no_other_user(repo, probe):
    with TritonServer(repo, models=["test_vit"], private=True, front=None, model_control=True) as server:
        e = server.endpoints
        assert isinstance(e, isolation.PrivateEndpoints) and server.is_ready()
        # Its user reaches it: HTTP over the socket, and gRPC (grpcio dials unix: targets).
        assert isolation.http_status(e.http, "/v2/models/test_vit/ready") == 200
        assert isolation.http_status(e.metrics, "/metrics") == 200
        import tritonclient.grpc as grpcclient

        triton = grpcclient.InferenceServerClient(e.grpc)
        x = grpcclient.InferInput("pixel_values", [1, 3, 64, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
        assert triton.infer("test_vit", [x]).as_numpy("logits").shape == (1, 1000)
        triton.close()
        # No TCP port at all.
        members = _group(server.process_group)
        listening = _tcp_listening_inodes()
        assert members and not any(_socket_inodes(pid) & listening for pid in members)
        # The key is on no command line, and whatever a command line holds, the sockets refuse the other user.
        for pid in members:
            assert server.control_key not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        code = PROBE_CODE.replace("sys.argv[1:]", repr([str(e.http_socket), str(e.grpc_socket), str(e.metrics_socket)]))
        answers = _as(probe, code).split("\n")
        assert [a.split()[-1] for a in answers if a] == ["EACCES"] * 3, answers
        cmdline = _as(probe, f"print(open('/proc/{server.process_group}/cmdline').read())")
        assert "tritonserver" in cmdline and server.control_key not in cmdline
        # Restarted (as the supervisor does), it comes back on the same sockets: the front's addresses hold.
        server.restart()
        assert server.endpoints == e and isolation.http_status(e.http, "/v2/models/test_vit/ready") == 200


def _in_mount_namespace(blocked: Path, needed: Path) -> list[str]:
    """A command prefix running the rest where `blocked` (a folder only root enters, e.g. /root holding pyenv's
    Python) is traversable: in a private mount namespace, a tmpfs over it holding the one folder needed inside, bound
    back. Nothing outside the namespace changes."""
    inside = blocked / needed.relative_to(blocked).parts[0]
    script = (
        'mnt=$(mktemp -d) && mount --bind "$1" "$mnt" && mount -t tmpfs -o mode=0755 none "$2" && mkdir "$1" && '
        'mount --bind "$mnt" "$1" && shift 2 && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(inside), str(blocked)]


def test_root_runs_triton_as_an_unprivileged_user(repo):
    if os.geteuid() != 0:
        pytest.skip("serve drops root only when started as root")
    account = isolation.triton_account()
    assert account is not None and account.uid != 0
    install = TritonInstall.find()
    prefix: list[str] = []
    needed = list(isolation.needed_paths(repo, (install.server, install.stub, install.libs)))
    blocked = isolation.first_blocked(account, needed)
    if blocked is not None:  # here: the interpreter under /root (0700); serve would say so and keep root
        # (serve hands Triton the repository through its own readable view, so the repository itself is not one)
        rest = [p for p in needed[:-1] if not Path(os.path.abspath(p)).is_relative_to(blocked[0])]
        other = isolation.first_blocked(account, rest)
        if other is not None:  # e.g. a checkout in a 0700 folder (mktemp -d): more than this test works around
            pytest.skip(f"{isolation.blocked_reason(account, [other[1]])}, besides {blocked[0]}")
        if not shutil.which("unshare"):
            pytest.skip(f"{isolation.blocked_reason(account, [blocked[1]])}, and no unshare to test around it")
        prefix = _in_mount_namespace(*blocked)
    command = [*prefix, sys.executable, "-m", "vitexport.cli", "serve", "--repo", str(repo)]
    command += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, deadline = "", time.monotonic() + 150
        while "ready (Ctrl-C" not in out:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else out
            out += proc.stdout.readline()
        from vitexport.serving import client

        http = re.search(r"^HTTP\s+(\S+)", out, re.MULTILINE).group(1)
        x = np.zeros((1, 3, 64, 64), np.float32)
        assert client.infer(http, "test_vit", {"pixel_values": x}, ["logits"])[0].shape == (1, 1000)
        triton = [pid for pid in _mentioning(f"vitexport-triton-{proc.pid}-")]
        programs = {Path(_argv0(pid)).name for pid in triton}
        assert programs == {"tritonserver", "triton_python_backend_stub"}, programs
        assert {_uid(pid) for pid in triton} == {account.uid}
        # The repository view hard-links the model files: the user's own files keep their owner.
        assert {f.stat().st_uid for f in repo.rglob("*") if f.is_file()} == {os.getuid()}
        regions = list(Path("/dev/shm").glob(f"vitexport_{proc.pid}_*"))
        assert regions and all(r.stat().st_uid == account.uid and r.stat().st_mode & 0o077 == 0 for r in regions)
        # Killed, `serve` still takes Triton with it: the parent-death signal is set after the change of user.
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _mentioning(f"vitexport-triton-{proc.pid}-") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _mentioning(f"vitexport-triton-{proc.pid}-") == []
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _argv0(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
