"""Triton's tools and features on what `vitexport repo` writes, on a real Triton: the venv's perf_analyzer (as
scripts/setup.sh leaves it) measuring the model and its image ensemble with the input-data files `repo` wrote beside
them, model_warmup in every generated config, the response cache (`serve --response-cache`) answering a repeated
image, and tritonserver flags passed through `serve --`, the ones that would undo its security defaults refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import ServingError
from vitexport.preprocess import PreprocessConfig
from vitexport.serving import config as cfg
from vitexport.serving import samples
from vitexport.serving.flags import REFUSED, check_passthrough
from vitexport.serving.repository import add_model, scan
from vitexport.serving.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
VENV_PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from test_serving_kubernetes import tiny_classifier

    from vitexport.export.onnx_import import PreprocessFlags, import_onnx

    root = tmp_path_factory.mktemp("triton_tools")
    flags = PreprocessFlags(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=16, crop_pct=1.0, interpolation="bilinear")
    add_model(root / "repo", import_onnx(tiny_classifier(root / "tiny.onnx"), name="tiny", flags=flags), name="tiny")
    return root / "repo"


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, startup_timeout=150, response_cache_mb=8, extra_args=["--id=vitexport-tools"]) as s:
        yield s


def test_the_venv_perf_analyzer_starts_as_is():
    """As a user runs it: no LD_LIBRARY_PATH, no arguments (it names the missing -m, having started)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run([VENV_PERF_ANALYZER], env=env, capture_output=True, text=True, timeout=60)
    assert "Failed to parse -m" in done.stdout + done.stderr, f"run scripts/setup.sh: {done.stderr.strip()}"


def test_setup_wraps_the_wheel_binary_again_after_a_reinstall(tmp_path):
    """scripts/perf_analyzer.sh on a venv whose bin/ holds the wheel's bare binary (a fresh `pip install`), twice."""
    elf = VENV_PERF_ANALYZER.parent.parent / "lib" / "perf_analyzer" / "perf_analyzer"
    if not elf.is_file():
        elf = VENV_PERF_ANALYZER  # not wrapped yet: the wheel's own
    libs = next(VENV_PERF_ANALYZER.parent.parent.glob("lib/python3*/site-packages/nvidia_pytriton.libs"))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / libs.parent.parent.name / "site-packages").mkdir(parents=True)
    (venv / "lib" / libs.parent.parent.name / "site-packages" / libs.name).symlink_to(libs)
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    for _ in range(2):
        shutil.copy2(elf, venv / "bin" / "perf_analyzer")  # what pip puts back
        for _ in range(2):  # and setup.sh run again on a wrapped one
            subprocess.run(["bash", ROOT / "scripts" / "perf_analyzer.sh", venv], check=True, timeout=60)
        assert (venv / "bin" / "perf_analyzer").read_bytes().startswith(b"#!/bin/sh")
        done = subprocess.run([venv / "bin" / "perf_analyzer"], env=env, capture_output=True, text=True, timeout=60)
        assert "Failed to parse -m" in done.stdout + done.stderr, done.stderr


@pytest.mark.parametrize(("model", "protocol"), [("tiny", "grpc"), ("tiny_image", "http")])
def test_perf_analyzer_measures_with_the_files_repo_wrote(repo, server, model, protocol):
    """The one-line command of docs/serving.md, a short window: every request answered (none refused as NaN)."""
    url = server.endpoints.grpc if protocol == "grpc" else server.endpoints.http
    data = repo / model / samples.PERF_INPUT
    command = [VENV_PERF_ANALYZER, "-m", model, "-u", url, "-i", protocol, "--input-data", data]
    window = ["--measurement-interval=300", "--stability-percentage=999", "--max-trials=3"]
    done = subprocess.run([*command, *window], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert float(re.search(r"Throughput: ([0-9.]+) infer/sec", done.stdout).group(1)) > 0
    assert "error" not in done.stdout.lower()


def test_the_input_data_are_the_photograph(repo):
    """The tensor model's file holds the photograph's pixels as the preprocessing makes them; the ensemble's the
    JPEG, serialized as one BYTES element (perf_analyzer sends b64 data as it is)."""
    import base64

    configs = scan(repo)
    tensor = json.loads((repo / "tiny" / samples.PERF_INPUT).read_text())["data"][0]["pixel_values"]
    pixels = np.frombuffer(base64.b64decode(tensor["b64"]), np.float32).reshape(tensor["shape"])
    preprocess = PreprocessConfig.from_dict(json.loads(cfg.parameter(configs["tiny"], "vitexport_preprocess")))
    (expected,) = samples.photo_tensors(preprocess)
    np.testing.assert_array_equal(pixels, expected)
    assert tensor["shape"] == list(configs["tiny"].input[0].dims)
    image = json.loads((repo / "tiny_image" / samples.PERF_INPUT).read_text())["data"][0]["image"]
    assert base64.b64decode(image["b64"]) == samples.serialized(samples.PHOTO.read_bytes()) and image["shape"] == [1]


def test_every_generated_model_warms_up(repo, server):
    """Every config but the ensemble's has a warmup sample whose files exist, and Triton loaded them all (a failed
    warmup fails the load)."""
    for name, config in scan(repo).items():
        if config.platform == "ensemble":
            assert not config.model_warmup  # Triton 2.51 fails an ensemble's warmup: its steps warm up instead
            continue
        (sample,) = config.model_warmup
        assert set(sample.inputs) == {t.name for t in config.input}
        for warm in sample.inputs.values():
            assert warm.zero_data or (repo / name / samples.WARMUP / warm.input_data_file).is_file()
        with urllib.request.urlopen(f"http://{server.endpoints.http}/v2/models/{name}/ready", timeout=10) as r:
            assert r.status == 200


def cache_hits(server) -> dict[str, float]:
    with urllib.request.urlopen(server.endpoints.metrics, timeout=10) as r:
        text = r.read().decode()
    return {m: float(v) for m, v in re.findall(r'nv_cache_num_hits_per_model\{model="([^"]+)",[^}]*\} ([0-9.]+)', text)}


def test_a_repeated_image_is_answered_from_the_response_cache(server):
    """The image ensemble (one output: its labelled probabilities) answers the second request from the cache, with
    the classification extension applied to the cached answer as asked.
    (Triton keys on the inputs alone: why a config of several outputs does not cache.)"""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.endpoints.http)
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[samples.PHOTO.read_bytes()]], dtype=np.object_))
    before = cache_hits(server)
    first = client.infer("tiny_image", [image], outputs=[httpclient.InferRequestedOutput("probabilities")])
    asked = [httpclient.InferRequestedOutput("probabilities", class_count=3)]
    second = client.infer("tiny_image", [image], outputs=asked)
    after = cache_hits(server)
    assert after.get("tiny_image", 0) > before.get("tiny_image", 0)
    probabilities = first.as_numpy("probabilities")[0]
    assert probabilities.shape == (10,)
    ranked = [x.decode().split(":") for x in second.as_numpy("probabilities")[0]]
    assert [int(r[1]) for r in ranked] == list(np.argsort(-probabilities, kind="stable")[:3])
    np.testing.assert_allclose([float(r[0]) for r in ranked], np.sort(probabilities)[::-1][:3], atol=1e-6)


def test_tritonserver_flags_pass_through(server):
    with urllib.request.urlopen(f"http://{server.endpoints.http}/v2", timeout=10) as r:
        assert json.load(r)["name"] == "vitexport-tools"  # --id


@pytest.mark.parametrize(
    "flag",
    [*(f"{f}=x" for f in REFUSED), "--model-control=poll", "--http-restricted", "--load-model", "--grpc-addr=0.0.0.0"],
)
def test_flags_that_undo_the_security_defaults_are_refused_in_one_line(flag, tmp_path):
    with pytest.raises(ServingError, match=r"^tritonserver flag --[a-z-]+.* is not passed through: "):
        check_passthrough(["--log-verbose=1", flag])
    result = CliRunner().invoke(app, ["serve", "--repo", str(tmp_path), "--", flag])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "is not passed through" in result.output


def test_other_flags_and_values_pass_as_given():
    args = ["--log-verbose=1", "--exit-timeout-secs", "5", "--http-thread-count=4", "--log-format=ISO8601"]
    assert check_passthrough(args) == tuple(args)
