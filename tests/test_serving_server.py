"""Against a real Triton server (the nvidia-pytriton wheel's tritonserver 2.51) on free ports: parity with
in-process ONNX Runtime and PyTorch over HTTP and gRPC, the image ensemble, served configs, dynamic batching,
refused requests, and a clean shutdown."""

import importlib.util
import io
import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from _serving import PROTOCOLS, url
from PIL import Image
from test_serving_backends import bomb_png, strip_png

from vitexport.errors import ServingError
from vitexport.export.validate import TOLERANCES, compare
from vitexport.models import get_spec
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image
from vitexport.serving import client
from vitexport.serving import config as cfg
from vitexport.serving.server import TritonServer, stubs_of

MODELS = ("test_vit", "test_deit_distilled", "test_resnet")
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def exported(tiny):
    """(PyTorch model, ONNX artifact) of each tiny model, as the shared `server` (tests/conftest.py) serves them."""
    return {name: (tiny(name).model, tiny(name).onnx) for name in MODELS}


def png(seed: int, size=(80, 100), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def test_loads_what_runs_here_and_notes_the_rest(server):
    assert "test_vit_ort" not in server.models
    assert "no backend in this Triton build" in server.skipped["test_vit_ort"]
    assert {"test_vit", "test_vit_image", "test_deit_distilled", "test_resnet", "test_resnet_image"} <= set(
        server.models
    )
    assert ("test_vit_ov" in server.models) == bool(HAS_OPENVINO)
    assert server.is_ready()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", MODELS)
def test_served_logits_match_onnxruntime_and_pytorch(server, exported, name, protocol):
    model, artifact = exported[name]
    x = torch.randn(3, 3, 64, 64)
    (served,) = client.infer(url(server, protocol), name, {"pixel_values": x.numpy()}, ["logits"], protocol=protocol)
    (in_process,) = ort_session(artifact.path).run(["logits"], {"pixel_values": x.numpy()})
    with torch.inference_mode():
        reference = model(x).numpy()
    assert served.shape == (3, 1000)
    np.testing.assert_allclose(served, in_process, atol=1e-5, rtol=0)
    report = compare("logits", reference, served)
    assert report.max_abs <= TOLERANCES["fp32"].max_abs and report.cosine >= TOLERANCES["fp32"].min_cosine


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_openvino_python_model_matches_pytorch(server, exported):
    model, _ = exported["test_vit"]
    x = torch.randn(2, 3, 64, 64)
    (served,) = client.infer(
        server.endpoints.grpc, "test_vit_ov", {"pixel_values": x.numpy()}, ["logits"], protocol="grpc"
    )
    with torch.inference_mode():
        reference = model(x).numpy()
    # An fp32 artifact is compiled with the f32 precision hint (OpenVINO would pick BF16 on this CPU otherwise).
    report = compare("logits", reference, served)
    assert report.max_abs <= TOLERANCES["fp32"].max_abs and report.cosine >= TOLERANCES["fp32"].min_cosine


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_image_ensemble_top5_matches_preprocessing_and_pytorch(server, exported, name, protocol):
    model, _ = exported[name]
    spec = get_spec(name)
    images = [png(1), png(2, (120, 90), "JPEG"), png(3, (64, 64))]
    results = client.classify(url(server, protocol), images, protocol=protocol, model=f"{name}_image", top_k=5)
    x = torch.from_numpy(np.stack([preprocess_image(b, spec.preprocess) for b in images]))
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)
    top = torch.topk(probs, 5, dim=1)
    labels = (server.repo_dir / name / "labels.txt").read_text().splitlines()
    for result, indices, scores in zip(results, top.indices, top.values, strict=True):
        assert list(result.indices) == indices.tolist()
        assert list(result.labels) == [labels[i] for i in indices.tolist()]
        np.testing.assert_allclose(result.scores, scores.numpy(), atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_a_plain_classifier_with_local_preprocessing(server, protocol):
    images = [png(4), png(5)]
    plain = client.classify(url(server, protocol), images, protocol=protocol, model="test_vit", top_k=3)
    ensemble = client.classify(url(server, protocol), images, protocol=protocol, model="test_vit_image", top_k=3)
    for a, b in zip(plain, ensemble, strict=True):
        assert a.indices == b.indices and a.labels == b.labels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_more_images_than_a_batch_and_fixed_batch_models(server):
    images = [png(20 + i, (40 + i, 50)) for i in range(11)]  # over the max batch of 8: two requests
    many = client.classify(server.endpoints.grpc, images, protocol="grpc", model="test_resnet_image")
    one_by_one = [
        client.classify(server.endpoints.grpc, [b], protocol="grpc", model="test_resnet_image")[0] for b in images
    ]
    assert [r.indices for r in many] == [r.indices for r in one_by_one]
    fixed = client.classify(server.endpoints.http, images[:3], model="test_resnet_fixed")  # batch 1: 3 requests
    assert [r.indices for r in fixed] == [r.indices for r in many[:3]]


@pytest.mark.parametrize("name", ["test_vit", "test_vit_image", "test_vit_preprocess", "test_resnet"])
def test_served_config_matches_what_was_written(server, name):
    written = cfg.read_config(server.repo_dir / name)
    with urllib.request.urlopen(f"http://{server.endpoints.http}/v2/models/{name}/config", timeout=10) as r:
        served_json = json.loads(r.read())
    from google.protobuf import json_format

    served = json_format.ParseDict(served_json, cfg.pb.ModelConfig(), ignore_unknown_fields=True)
    grpc_served = client.model_config(server.endpoints.grpc, name, protocol="grpc")
    for got in (served, grpc_served):
        # Triton fills in defaults (instance names, version policy, optimization); what we set must be kept.
        for field in ("name", "platform", "backend", "max_batch_size", "input", "output", "ensemble_scheduling"):
            assert getattr(got, field) == getattr(written, field), field
        assert dict(got.parameters) == dict(written.parameters)
        if written.dynamic_batching.preferred_batch_size:  # none given: Triton fills in max_batch_size
            assert got.dynamic_batching.preferred_batch_size == written.dynamic_batching.preferred_batch_size
        assert (
            got.dynamic_batching.max_queue_delay_microseconds == written.dynamic_batching.max_queue_delay_microseconds
        )
        assert [(g.count, g.kind) for g in got.instance_group] == [(g.count, g.kind) for g in written.instance_group]


def test_dynamic_batching_merges_concurrent_requests(server):
    def counts():
        metrics = client.read_metrics(server.endpoints.metrics)
        return (
            metrics[("nv_inference_request_success", "test_resnet")],
            metrics[("nv_inference_exec_count", "test_resnet")],
        )

    requests_before, executions_before = counts()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)

    def one(_):
        return client.infer(server.endpoints.grpc, "test_resnet", {"pixel_values": x}, ["logits"], protocol="grpc")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert all(np.allclose(r[0], results[0][0], atol=1e-5) for r in results)
    requests_after, executions_after = counts()
    assert requests_after - requests_before == 16
    assert executions_after - executions_before < 16


# Each bad request with Triton's own reason (the server's check, or the preprocessing model's error through the
# ensemble), not just the client's prefix, which a connection failure would carry too.
BAD_REQUESTS = {
    "wrong shape": (
        "test_vit",
        {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)},
        ["logits"],
        r"input 'pixel_values': shape dim 2 must be 64, not 32$",  # the front's line
    ),
    "wrong dtype": (
        "test_vit",
        {"pixel_values": np.zeros((1, 3, 64, 64), np.float64)},
        ["logits"],
        r"input 'pixel_values' is FP32, not 'FP64'$",
    ),
    "batch over the maximum": (
        "test_vit",
        {"pixel_values": np.zeros((9, 3, 64, 64), np.float32)},
        ["logits"],
        r"input 'pixel_values': batch 9 is over the model's max_batch_size 8$",
    ),
    "undecodable image bytes": (
        "test_vit_image",
        {"image": np.array([[b"not an image at all"]], dtype=np.object_)},
        ["probabilities"],
        r"in ensemble 'test_vit_image', cannot decode image: not an image format Pillow reads$",
    ),
    "decompression bomb": (
        "test_vit_image",
        {"image": np.array([[bomb_png()]], dtype=np.object_)},
        ["probabilities"],
        r"in ensemble 'test_vit_image', image is 400000000 pixels, over the limit of 50000000$",
    ),
    "a 20000 x 1 strip": (
        "test_vit_image",
        {"image": np.array([[strip_png()]], dtype=np.object_)},
        ["probabilities"],
        r"image 20000 x 1 would be resized to \d+ x \d+, over the limit of 16777216 pixels",
    ),
    "empty image": (
        "test_vit_image",
        {"image": np.array([[b""]], dtype=np.object_)},
        ["probabilities"],
        r"in ensemble 'test_vit_image', empty image: 0 bytes$",
    ),
    "NaN pixels": (
        "test_vit",
        {"pixel_values": np.full((1, 3, 64, 64), np.nan, np.float32)},
        ["logits"],
        r"pixel_values holds NaN or Inf values$",
    ),
    "finite pixels of 3e38": (  # were a 200 with NaN logits: they overflow inside the model
        "test_vit",
        {"pixel_values": np.full((1, 3, 64, 64), 3e38, np.float32)},
        ["logits"],
        r"logits came out NaN or Inf: input values out of the model's range$",
    ),
}
# The client's mistakes are client errors: HTTP 400 and gRPC INVALID_ARGUMENT, as for Triton's own shape check.
CLIENT_MISTAKES = ("wrong shape", "undecodable image bytes", "decompression bomb", "a 20000 x 1 strip", "empty image")
CLIENT_MISTAKES += ("NaN pixels", "finite pixels of 3e38")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_an_error_and_the_server_stays_ready(server, case, protocol):
    model, inputs, outputs, reason = BAD_REQUESTS[case]
    with pytest.raises(ServingError, match=f"^{model} refused the request: .*{reason}"):
        client.infer(url(server, protocol), model, inputs, outputs, protocol=protocol)
    assert server.is_ready()
    good = client.classify(url(server, protocol), [png(9)], protocol=protocol, model="test_vit_image", top_k=1)
    assert len(good) == 1 and len(good[0].labels) == 1


@pytest.mark.parametrize("case", CLIENT_MISTAKES)
def test_client_mistakes_are_client_errors(server, case):
    model, inputs, _, _ = BAD_REQUESTS[case]
    codes = {}
    for protocol in PROTOCOLS:
        with client.connection(url(server, protocol), protocol) as (triton, module):
            tensors = []
            for name, array in inputs.items():
                datatype = "BYTES" if array.dtype == np.object_ else "FP32"
                tensors.append(module.InferInput(name, list(array.shape), datatype))
                tensors[-1].set_data_from_numpy(array)
            with pytest.raises(Exception) as refused:
                triton.infer(model, tensors)
            codes[protocol] = str(refused.value.status())
    assert codes == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def test_client_errors_are_one_line(server):
    with pytest.raises(ServingError, match=r"^test_vit_image has 1000 classes; ask for --top-k 1000 or fewer$"):
        client.classify(server.endpoints.http, [png(1)], model="test_vit_image", top_k=1001)
    with pytest.raises(ServingError, match="cannot read no_such_model"):
        client.classify(server.endpoints.http, [png(1)], model="no_such_model")
    with pytest.raises(ServingError, match="give --model"):
        client.classify(server.endpoints.http, [png(1)])  # two ensembles are served: no default


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(entry))
    return members


def test_stop_leaves_no_stub_processes_and_no_shared_memory(server):
    from vitexport.serving.server import SHM_DIR

    # A region a crashed run left behind (its owner's pid is gone): it holds request bytes, and goes at start.
    dead = next(pid for pid in range(999_999, 0, -1) if not Path(f"/proc/{pid}").exists())
    orphan = SHM_DIR / f"vitexport_{dead}_0123abcd_leftover"
    orphan.write_bytes(b"request bytes")
    # Asked for an ensemble alone: in mode NONE Triton loads what its private repository view holds, so the view
    # must bring the ensemble's steps.
    small = TritonServer(server.repo_dir, models=["test_resnet_image"])
    assert small.skipped == {} and small.models == ("test_resnet_image",)
    with small:
        images = [png(7), png(8)]
        served = client.classify(small.endpoints.http, images, model="test_resnet_image", top_k=3)
        expected = client.classify(server.endpoints.http, images, model="test_resnet_image", top_k=3)
        assert [r.indices for r in served] == [r.indices for r in expected]
        assert _ready(small, "test_resnet") and not _ready(small, "test_vit")
        assert not orphan.exists()
        pgid = small.process_group
        assert len(_group_members(pgid)) >= 2  # the server and the model's stub
        regions = list(client_shm(small))
        assert regions, "the Python backend should have created its shared-memory region"
        # Private: no other local user can read what the requests carried.
        assert all(r.stat().st_mode & 0o077 == 0 for r in regions), [oct(r.stat().st_mode) for r in regions]
    assert _group_members(pgid) == []
    assert list(client_shm(small)) == []


def test_a_second_interrupt_while_stopping_still_kills_and_cleans_up(tmp_path, monkeypatch):
    """Ctrl-C twice: the second one lands in the wait for Triton's orderly exit."""
    import signal
    import subprocess

    from vitexport.serving import server as server_module

    class StillStopping:
        pid = 424242
        waits = 0

        def poll(self):
            return None

        def send_signal(self, signum):
            self.signal = signum

        def wait(self, timeout=None):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt  # the second Ctrl-C
            raise subprocess.TimeoutExpired("tritonserver", timeout)

    killed = []
    monkeypatch.setattr(server_module.os, "killpg", lambda pgid, signum: killed.append((pgid, signum)))
    repo = tmp_path / "repo"
    repo.mkdir()
    s = TritonServer(repo)
    s._proc, s._workdir = StillStopping(), tmp_path / "workdir"
    s._workdir.mkdir()
    region = server_module.SHM_DIR / f"{s._shm_prefix}test"
    region.write_bytes(b"")
    try:
        with pytest.raises(KeyboardInterrupt):
            s.stop()
    finally:
        region.unlink(missing_ok=True)
    assert killed == [(424242, signal.SIGKILL)]
    assert not region.exists() and not (tmp_path / "workdir").exists()


def client_shm(server):
    from vitexport.serving.server import SHM_DIR

    return SHM_DIR.glob(f"{server._shm_prefix}*")


def test_unknown_models_are_refused_before_starting(server):
    with pytest.raises(ServingError, match="not in"):
        TritonServer(server.repo_dir, models=["nope"])


def _post(http_url: str, path: str, body: dict | None = None, headers: dict | None = None) -> int:
    """The HTTP status Triton answers a POST with (a plain-text POST like any web page can send to localhost)."""
    import urllib.error

    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(f"http://{http_url}{path}", data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _ready(server, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.endpoints.http}/v2/models/{model}/ready", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def _evil_load(marker: Path) -> dict:
    """A load request carrying its own config and model.py: code that would run as the server's user."""
    import base64

    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nclass TritonPythonModel:\n    pass\n"
    config = {"backend": "python", "max_batch_size": 0, "input": [], "output": []}
    return {"parameters": {"config": json.dumps(config), "file:1/model.py": base64.b64encode(code.encode()).decode()}}


def test_nobody_loads_or_unloads_models_by_default(server, tmp_path):
    marker = tmp_path / "ran"
    http = server.endpoints.http
    assert _post(http, "/v2/repository/models/evil/load", _evil_load(marker)) >= 400
    assert _post(http, "/v2/repository/models/test_resnet/unload") >= 400
    with (
        client.connection(server.endpoints.grpc, "grpc") as (grpc_client, _),
        pytest.raises(Exception, match=r"(?i)not allowed|mode"),
    ):
        grpc_client.unload_model("test_resnet_image")
    assert not marker.exists() and not _ready(server, "evil")
    assert _ready(server, "test_resnet") and _ready(server, "test_resnet_image")


def test_model_control_is_opened_only_with_its_key(server, tmp_path):
    from vitexport.serving.server import CONTROL_HEADER

    marker = tmp_path / "ran"
    with TritonServer(server.repo_dir, models=["test_resnet"], model_control=True) as s:
        http = s.endpoints.http
        assert _post(http, "/v2/repository/models/evil/load", _evil_load(marker)) >= 400
        assert _post(http, "/v2/repository/models/test_resnet/unload", headers={CONTROL_HEADER: "a guess"}) >= 400
        with (
            client.connection(s.endpoints.grpc, "grpc") as (grpc_client, _),
            pytest.raises(Exception, match=CONTROL_HEADER),
        ):
            grpc_client.unload_model("test_resnet")
        assert _ready(s, "test_resnet") and not marker.exists()
        for protocol in PROTOCOLS:  # the index, the only list of models, is behind the key too: say so
            with pytest.raises(ServingError, match="lists its models only with its control key: give --model"):
                client.classify(url(s, protocol), [png(1)], protocol=protocol)

        def resnet_stubs() -> list[int]:
            return [stub.pid for stub in stubs_of(s.process_group)[0] if stub.model == "test_resnet"]

        assert resnet_stubs()
        s.check_backends()
        assert _post(http, "/v2/repository/models/test_resnet/unload", headers={CONTROL_HEADER: s.control_key}) == 200
        assert not _ready(s, "test_resnet")
        deadline = time.monotonic() + 30
        while resnet_stubs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not resnet_stubs()
        s.check_backends()  # its stub ended because the key's holder asked: no dead backend
