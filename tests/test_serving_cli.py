"""The repo, serve and infer commands: `repo` and `infer` through CliRunner, `serve` as a real process that is
stopped with SIGTERM and must leave no stub process and no shared memory behind."""

import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitexport.artifacts import load_artifact
from vitexport.cli import app
from vitexport.export.onnx import export_onnx
from vitexport.serving import config as cfg
from vitexport.serving.repository import scan

runner = CliRunner()
VITEXPORT = [sys.executable, "-m", "vitexport.cli"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository written by `vitexport repo test_vit` (which exports the model first) plus a model for the
    official containers only."""
    repo = tmp_path_factory.mktemp("cli_repo") / "model_repository"
    result = runner.invoke(app, ["repo", "test_vit", "--repo", str(repo), "--preferred-batch-size", "4"])
    assert result.exit_code == 0, result.output
    # The version folder holds the model and its sidecar: an artifact the next command can take.
    artifact = repo / "test_vit" / "1" / "model.onnx"
    args = ["repo", str(artifact), "--repo", str(repo), "--backend", "onnxruntime", "--name", "gpu", "--no-ensemble"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["local"] == {"gpu": False}
    return repo


def test_repo_writes_parsable_configs_and_a_table(repo):
    configs = scan(repo)
    assert set(configs) == {"test_vit", "test_vit_preprocess", "test_vit_postprocess", "test_vit_image", "gpu"}
    assert list(configs["test_vit"].dynamic_batching.preferred_batch_size) == [4]
    assert configs["gpu"].platform == "onnxruntime_onnx"


def test_repo_adds_versions_and_reports_json(repo, tmp_path):
    artifact = repo / "test_vit" / "1" / "model.onnx"
    args = ["repo", str(artifact), "--repo", str(tmp_path / "r"), "--no-ensemble", "--instances", "2"]
    first = json.loads(runner.invoke(app, [*args, "--json"]).output)
    second = json.loads(runner.invoke(app, [*args, "--json"]).output)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["models"] == ["test_vit"] and first["local"] == {"test_vit": True}
    assert cfg.read_config(tmp_path / "r" / "test_vit").instance_group[0].count == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "caffe"], "Invalid value for '--backend'"),
        (["--name", "../escape"], "model name '../escape'"),
        (["--version", "1", "--repo", "{repo}"], "already exists"),
        (["--max-batch-size", "4", "--preferred-batch-size", "8"], "outside 1..4"),
        (["--backend", "tensorrt"], "serves tensorrt models"),
        (["--max-batch-size", "2147483648"], "max batch size must be 0..4096"),
        (["--version", "99999999999999999999"], "version must be 1..2147483647"),
    ],
)
def test_repo_errors_are_one_line(repo, tmp_path, extra, message):
    extra = [e.replace("{repo}", str(repo)) for e in extra]
    args = ["repo", str(repo / "test_vit" / "1" / "model.onnx"), "--repo", str(tmp_path / "r"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_model_name_is_one_line(tmp_path):
    result = runner.invoke(app, ["repo", "no_such_model", "--repo", str(tmp_path)])
    assert result.exit_code == 1 and "unknown model 'no_such_model'" in result.output


def _lines(stream) -> "queue.Queue[str]":
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def _jpeg(path: Path, seed: int) -> Path:
    pixels = (np.random.default_rng(seed).random((70, 90, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    return path


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(os.getpid()):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry))
    return found


def _triton_of(serve_pid: int) -> list[int]:
    """The tritonserver and stub processes a `serve` started: their command lines name its work folder (the backend
    folder, the private repository view), which carries its pid."""
    return _processes_mentioning(f"vitexport-triton-{serve_pid}-")


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_serve_infer_and_sigterm(repo, tmp_path):
    command = [*VITEXPORT, "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = _lines(proc.stdout), _lines(proc.stderr)
        seen, deadline = [], time.monotonic() + 150
        while not seen or seen[-1].strip() != "ready (Ctrl-C to stop)":
            assert proc.poll() is None, "".join(seen) + "".join(list(err.queue))
            assert time.monotonic() < deadline, "serve was not ready in time"
            try:
                seen.append(out.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(seen)
        http = re.search(r"^HTTP\s+(\S+)", text, re.MULTILINE).group(1)
        grpc = re.search(r"^gRPC\s+(\S+)", text, re.MULTILINE).group(1)
        metrics = re.search(r"^metrics\s+(\S+)", text, re.MULTILINE).group(1)
        assert "test_vit_image" in text and "gpu" not in text.split("models", 1)[1]
        assert any("not loading gpu" in line for line in err.queue)

        images = [str(_jpeg(tmp_path / f"{i}.jpg", i)) for i in range(2)]
        by_protocol = {}
        for protocol, url in (("http", http), ("grpc", grpc)):
            result = runner.invoke(app, ["infer", *images, "--url", url, "--protocol", protocol, "--json"])
            assert result.exit_code == 0, result.output
            by_protocol[protocol] = json.loads(result.output)
        assert [r["indices"] for r in by_protocol["http"]] == [r["indices"] for r in by_protocol["grpc"]]
        assert all(len(r["labels"]) == 5 for r in by_protocol["http"])
        table = runner.invoke(app, ["infer", images[0], "--url", http, "--model", "test_vit", "--top-k", "2"])
        assert table.exit_code == 0 and by_protocol["http"][0]["labels"][0].split(",")[0] in table.output
        bad = runner.invoke(app, ["infer", images[0], "--url", http, "--protocol", "ftp"])
        assert bad.exit_code == 1 and "Invalid value for '--protocol'" in bad.output
        # Each protocol at the other's port: one line that says which, not geventhttpclient's parser traceback.
        for url, protocol, hint in ((grpc, "http", "--protocol grpc"), (http, "grpc", "--protocol http")):
            crossed = runner.invoke(app, ["infer", images[0], "--url", url, "--protocol", protocol, "--timeout", "5"])
            assert crossed.exit_code == 1 and hint in crossed.output, crossed.output
            assert len(crossed.output.strip().splitlines()) == 1 and "Traceback" not in crossed.output
        # The metrics port speaks HTTP, not Triton's API: its empty 200 to a GET was a JSONDecodeError's traceback.
        metrics_port = metrics.split("//", 1)[1].split("/", 1)[0]  # as a user gives it: HOST:PORT
        for more in ([], ["--model", "test_vit"]):  # a POST (the model index) and a GET (the model's config)
            at_metrics = runner.invoke(app, ["infer", images[0], "--url", metrics_port, "--timeout", "5", *more])
            assert at_metrics.exit_code == 1 and "Traceback" not in at_metrics.output, at_metrics.output
            assert f"{metrics_port} is Triton's metrics port, not its HTTP API" in at_metrics.output, at_metrics.output
            assert len(at_metrics.output.strip().splitlines()) == 1, at_metrics.output
        unknown = runner.invoke(app, ["infer", images[0], "--url", http, "--model", "no_such_model", "--timeout", "5"])
        assert unknown.exit_code == 1 and "no_such_model" in unknown.output and "metrics" not in unknown.output
        assert len(_triton_of(proc.pid)) >= 2  # the server and its stubs

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.5)  # let the reader thread drain the last line
        assert "stopped" in "".join(list(out.queue))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _triton_of(proc.pid) == []
    assert not list(Path("/dev/shm").glob(f"vitexport_{proc.pid}_*"))


def test_infer_without_a_server_is_one_line(tmp_path):
    image = _jpeg(tmp_path / "a.jpg", 0)
    result = runner.invoke(app, ["infer", str(image), "--url", "127.0.0.1:1", "--protocol", "grpc"])
    assert result.exit_code == 1 and "cannot reach Triton" in result.output


def test_an_endless_image_file_is_refused_not_read(tmp_path):
    """`infer /dev/zero` read until the kernel killed it (24 GB); a file over the limit is read no further."""
    result = runner.invoke(app, ["infer", "/dev/zero", "--url", "127.0.0.1:1"])
    assert result.exit_code == 1 and "image /dev/zero is a character device" in result.output, result.output
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate((128 << 20) + 1)  # sparse: no disk used
    result = runner.invoke(app, ["infer", str(huge), "--url", "127.0.0.1:1"])
    assert result.exit_code == 1 and f"image {huge} is over 128 MB" in result.output, result.output


def test_a_fifo_image_is_refused_by_its_type(tmp_path):
    """`infer` of a FIFO hung in open() for ever, waiting for a writer. A process of its own, so that a hang is a
    timeout here, not a stuck test run."""
    fifo = tmp_path / "a.jpg"
    os.mkfifo(fifo)
    done = subprocess.run(
        [*VITEXPORT, "infer", str(fifo), "--url", "127.0.0.1:1"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and f"image {fifo} is a FIFO: only regular files are read" in done.stderr, done.stderr
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(("url", "message"), [("http://[::1", "Invalid IPv6 URL"), ("localhost:99999", "out of range")])
def test_a_malformed_url_is_one_line(tmp_path, url, message):
    """A process of its own: tritonclient's failed constructor also printed a traceback from its destructor."""
    image = _jpeg(tmp_path / "a.jpg", 0)
    done = subprocess.run([*VITEXPORT, "infer", str(image), "--url", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and message in done.stderr and "(give HOST:PORT)" in done.stderr
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_gives_up_on_a_hung_server(tmp_path, protocol):
    import socket

    image = _jpeg(tmp_path / "a.jpg", 0)
    with socket.socket() as hung:  # the kernel accepts connections for it; nothing ever answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"127.0.0.1:{hung.getsockname()[1]}"
        args = ["infer", str(image), "--url", url, "--protocol", protocol, "--timeout", "0.5"]
        started = time.monotonic()
        result = runner.invoke(app, args)
    assert result.exit_code == 1 and time.monotonic() - started < 10
    assert f"cannot reach Triton at {url}: no reply within 0.5 s" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_without_the_serve_extra_commands_fail_in_one_line(repo, tmp_path, monkeypatch):
    for module in ("tritonclient.grpc", "tritonclient.http"):
        monkeypatch.setitem(sys.modules, module, None)  # as if tritonclient were not installed
    cfg.model_config_pb2.cache_clear()
    try:
        artifact = repo / "test_vit" / "1" / "model.onnx"
        results = [
            runner.invoke(app, ["repo", str(artifact), "--repo", str(tmp_path / "r")]),
            runner.invoke(app, ["infer", str(_jpeg(tmp_path / "a.jpg", 0)), "--url", "127.0.0.1:1"]),
        ]
    finally:
        cfg.model_config_pb2.cache_clear()
    for result in results:
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "pip install 'vitexport[serve]'" in result.output
        assert len(result.output.strip().splitlines()) == 1


def _serve_test_vit(repo) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """`serve` of the test_vit model alone, as a process, once it printed "ready"; its stderr queue."""
    command = [*VITEXPORT, "serve", "--repo", str(repo), "--models", "test_vit", "--http-port", "0"]
    command += ["--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err, deadline = _lines(proc.stdout), _lines(proc.stderr), time.monotonic() + 150
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(list(err.queue))
        try:
            if out.get(timeout=1).startswith("ready"):
                return proc, err
        except queue.Empty:
            continue


def _gone(serve_pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while _triton_of(serve_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _triton_of(serve_pid) == []


def _stub_of(serve_pid: int, instance: str) -> int | None:
    for pid in _triton_of(serve_pid):
        with __import__("contextlib").suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"triton_python_backend_stub") and instance.encode() in argv:
                return pid
    return None


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_a_killed_serve_leaves_no_server_behind(repo):
    """SIGKILL gives `serve` no chance to clean up: Triton is tied to it by PR_SET_PDEATHSIG and stops itself."""
    proc, _ = _serve_test_vit(repo)
    assert len(_triton_of(proc.pid)) >= 2
    proc.kill()
    proc.wait()
    assert _gone(proc.pid)
    # Its work folder (backend links, log) is left behind; the next server start removes it (a test running beside
    # this one may be that start).
    from vitexport.serving.processes import remove_orphaned_workdirs

    remove_orphaned_workdirs()
    assert not list(Path(tempfile.gettempdir()).glob(f"vitexport-triton-{proc.pid}-*"))


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_sighup_stops_serve_in_order(repo):
    """The terminal that started `serve` closed: the same orderly stop as Ctrl-C (SIGHUP's default would skip it)."""
    proc, _ = _serve_test_vit(repo)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 0
    assert _gone(proc.pid, timeout=5)
    assert not list(Path("/dev/shm").glob(f"vitexport_{proc.pid}_*"))


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_a_dead_backend_stops_serve_in_one_line(repo):
    """Triton keeps calling a model ready after its stub was killed and answers every request with a 500: `serve`
    notices, stops Triton and exits 1 naming the model, for its supervisor to restart."""
    proc, err = _serve_test_vit(repo)
    stub = _stub_of(proc.pid, "test_vit_0_0")
    assert stub is not None
    os.kill(stub, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert _gone(proc.pid)
    time.sleep(0.5)  # let the reader thread drain the last line
    # (A root `serve` whose Triton user cannot read the interpreter says so in a warning first.)
    lines = [line for line in err.queue if line.strip() and not line.startswith("warning: Triton runs as root")]
    assert len(lines) == 1 and "model test_vit (instance test_vit_0_0" in lines[0], lines
    assert "died while serving" in lines[0]


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_a_backend_killed_while_loading_fails_the_start_in_one_line(repo):
    """A stub killed as it starts leaves Triton waiting for it for ever: `serve` sees it die and gives up at once."""
    command = [*VITEXPORT, "serve", "--repo", str(repo), "--models", "test_vit", "--http-port", "0"]
    proc = subprocess.Popen(
        [*command, "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    try:
        while (stub := _stub_of(proc.pid, "test_vit_0_0")) is None:
            assert proc.poll() is None and time.monotonic() - started < 60
            time.sleep(0.01)
        os.kill(stub, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "ready" not in out, out
    # Named by its instance when `serve` saw the stub run, else as the model still loading.
    assert len(err.strip().splitlines()) == 1 and "model test_vit" in err and "died while loading" in err, err
    assert _gone(proc.pid)


def test_serve_on_a_taken_port_is_one_line(repo):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["serve", "--repo", str(repo), "--models", "test_vit", "--http-port", port, "--grpc-port", "0"]
        result = runner.invoke(app, [*args, "--metrics-port", "0"])
    assert result.exit_code == 1
    assert f"the HTTP port {port} on 127.0.0.1 is in use" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "ready" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--http-port", "70000"], "the HTTP port must be 1..65535 (or 0: any free port), not 70000"),
        (["--grpc-port", "-1"], "the gRPC port must be 1..65535"),
        (["--host", "not a host"], "cannot listen on --host 'not a host'"),
    ],
)
def test_serve_bad_addresses_are_one_line_before_starting(repo, extra, message):
    started = time.monotonic()
    result = runner.invoke(app, ["serve", "--repo", str(repo), "--models", "test_vit", *extra])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and time.monotonic() - started < 5


@pytest.mark.integration  # `vitexport serve` as a subprocess: a real Triton
def test_sigterm_while_starting_stops_the_server(repo):
    command = [*VITEXPORT, "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # tritonserver is up (its command line names serve's work folder) but still loading the models.
    while not _triton_of(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert _triton_of(proc.pid) == []


def test_repo_serves_the_fastest_gated_variant(tmp_path):
    """Of several CPU variants of one model, `repo` times each here and writes the fastest that passed its gate."""
    from vitexport.export.optimize import Precision, Runtime, optimize

    plain = export_onnx("test_vit", tmp_path / "v.onnx")
    fp16 = optimize(plain, runtime=Runtime.onnxruntime, precision=Precision.fp16)
    repo_dir = tmp_path / "repo"
    result = runner.invoke(app, ["repo", str(plain.path), str(fp16.path), "--repo", str(repo_dir), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    timed = out["timed"]
    assert set(timed) == {str(plain.path), str(fp16.path)} and all(v > 0 for v in timed.values())
    fastest = max(timed, key=timed.get)
    served = load_artifact(Path(out["path"]) / "model.onnx")
    assert served.precision == load_artifact(fastest).precision

    ungated = tmp_path / "ungated.onnx"
    shutil.copy(plain.path, ungated)
    ungated.with_name("ungated.onnx.json").write_text(
        json.dumps(plain.with_(path=ungated, validation={"passed": False}).to_dict())
    )
    result = runner.invoke(app, ["repo", str(plain.path), str(ungated), "--repo", str(repo_dir)])
    assert result.exit_code == 1
    assert "ungated.onnx has not passed its accuracy gate" in result.output
    # Alone, it is not timed against anything, but its gate is still checked.
    result = runner.invoke(app, ["repo", str(ungated), "--repo", str(repo_dir), "--name", "alone"])
    assert result.exit_code == 1 and "ungated.onnx has not passed its accuracy gate" in result.output
    assert not (repo_dir / "alone").exists()


def test_repo_names_a_missing_file_as_such(tmp_path):
    result = runner.invoke(app, ["repo", str(tmp_path / "absent.onnx"), "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 1
    assert f"error: no such file: {tmp_path / 'absent.onnx'}" in result.output
