"""The front door, `import vitexport as vx`: every public name documented and loaded on first use (importing the
package imports no heavy library), the stage functions taking paths and choices as strings, and `deploy` as a
library call that returns what it did and prints nothing. (The README's example, served by a real Triton, runs in
test_readme_examples.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

import vitexport as vx
from vitexport.errors import ArtifactError, ServingError, VitExportError

HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "tritonclient")
API = (
    "__version__",
    "create_model",
    "get_spec",
    "list_models",
    "export_onnx",
    "import_onnx",
    "load_artifact",
    "ModelArtifact",
    "optimize",
    "deploy",
    "add_to_repository",
    "serve",
    "Client",
    "VitExportError",
)


def test_importing_vitexport_imports_no_heavy_library():
    probe = f"import sys, vitexport; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_api_is_listed_documented_and_loads_on_first_use():
    assert set(API) <= set(vx.__all__) == {"__version__", *vx._LAZY}
    assert dir(vx) == sorted(vx.__all__)
    for name in vx.__all__:
        value = getattr(vx, name)
        assert name == "__version__" or value.__doc__, f"{name} has no docstring"
    assert vx.create_model is __import__("vitexport.models", fromlist=["create_model"]).create_model
    assert issubclass(vx.VitExportError, Exception)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vx.nope  # noqa: B018


def test_names_load_lazily_in_a_fresh_interpreter():
    """Only what is asked for is imported: the errors need no torch, the models do."""
    probe = (
        "import sys, vitexport as vx; vx.VitExportError; vx.load_artifact; vx.Client;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); vx.get_spec('test_vit');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True"]


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    return vx.export_onnx("test_vit", str(tmp_path_factory.mktemp("api") / "test_vit.onnx"))


def test_stage_functions_take_paths_and_choices_as_strings(vit_onnx, tmp_path):
    assert vx.load_artifact(str(vit_onnx.path)) == vit_onnx
    variant = vx.optimize(str(vit_onnx.path), runtime="onnxruntime", precision="fp32", fuse_attention="none")
    assert (variant.format, variant.precision, variant.fuse_attention) == ("onnx", "fp32", "none")
    assert variant.passed_gate
    added = vx.add_to_repository(str(tmp_path / "repo"), str(variant.path), name="vit", backend="python-onnxruntime")
    assert added.models[0] == "vit" and "vit_image" in added.models  # the model, then its ensemble's parts
    assert added.backend.value == "python-onnxruntime"
    features = vx.export_onnx("test_vit", tmp_path / "features.onnx", heads="features")
    assert features.output_names == ("embeddings",)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda a: vx.optimize(a, runtime="tensorflow"),
            "runtime must be one of onnxruntime, openvino, tensorrt, not 'tensorflow'",
        ),
        (lambda a: vx.optimize(a, precision="int4"), "precision must be one of fp32, fp16, bf16, int8, not 'int4'"),
        (lambda a: vx.export_onnx("test_vit", "x.onnx", heads="both"), "heads must be one of"),
        (lambda a: vx.add_to_repository("r", a, backend="tf-serving"), "backend must be one of"),
        (lambda a: vx.optimize("absent.onnx"), "no such file: absent.onnx"),
    ],
)
def test_bad_choices_are_one_line(vit_onnx, call, message):
    with pytest.raises(VitExportError) as refused:
        call(vit_onnx)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_client_holds_the_address_and_refuses_a_bad_protocol():
    client = vx.Client("127.0.0.1:8000", protocol="grpc", timeout=5)
    assert client.protocol.value == "grpc" and client.url == "127.0.0.1:8000"
    with pytest.raises(ServingError, match="protocol must be http or grpc"):
        vx.Client("127.0.0.1:8000", protocol="ftp")
    with pytest.raises(ServingError, match=r"cannot reach Triton at 127\.0\.0\.1:1"):
        vx.Client("127.0.0.1:1", timeout=2).ready_models()  # nothing listens on port 1


def test_serve_refuses_a_missing_repository_before_starting(tmp_path):
    with pytest.raises(ServingError, match="does not exist"), vx.serve(tmp_path / "absent"):
        pass


def test_deploy_returns_what_it_did_and_prints_nothing(vit_onnx, tmp_path, capfd):
    deployment = vx.deploy(
        str(vit_onnx.path), repo=tmp_path / "repo", name="vit", runtimes="onnxruntime-fp32", workdir=tmp_path / "w"
    )
    assert isinstance(deployment, vx.Deployment)
    (candidate,) = deployment.candidates
    assert candidate.chosen and candidate.artifact == deployment.chosen and deployment.chosen.passed_gate
    assert deployment.added.models[0] == "vit" and "vit_image" in deployment.added.models
    assert deployment.source == vit_onnx
    (note,) = deployment.notes  # no calibration images given: it says which photographs it chose
    assert "calibrating on real photographs" in note
    assert capfd.readouterr() == ("", "")
    assert vx.load_artifact(next((tmp_path / "repo" / "vit" / "1").glob("model.*.json"))).precision == "fp32"


def test_deploy_refuses_bad_input_before_any_work(tmp_path):
    for kwargs, message in (
        ({"runtimes": [("onnxruntime", "int4")]}, "precision must be one of"),
        ({"runtimes": [("onnxruntime", "bf16")]}, "no onnxruntime bf16 variant"),
        ({"runtimes": ["openvino-int8", ("onnxruntime", "fp16")]}, "deploy builds .*; not onnxruntime-fp16"),
        ({"runtimes": "openvino-int4"}, "--runtimes takes RUNTIME-PRECISION items"),
        ({"runtimes": []}, "runtimes names no candidate"),
        ({"calibration": tmp_path / "absent"}, "is not a folder of images"),
    ):
        with pytest.raises(VitExportError, match=message):
            vx.deploy("test_vit", repo=tmp_path / "r", workdir=tmp_path / "w", **kwargs)
    with pytest.raises(VitExportError, match="unknown model 'nope_model'"):
        vx.deploy("nope_model", workdir=tmp_path / "w")
    with pytest.raises(ArtifactError, match="no such file"):
        vx.deploy(tmp_path / "absent.onnx", workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_serve_and_the_client_against_a_real_triton(vit_onnx, tmp_path):
    """The context manager yields a ready server; each Client method reaches it over HTTP and gRPC alike."""
    from _photos import photo_paths

    repo = tmp_path / "repo"
    vx.add_to_repository(repo, vit_onnx, name="vit")
    features = vx.export_onnx("test_vit", tmp_path / "features.onnx", heads="features")
    vx.add_to_repository(repo, features.path, name="emb")
    images = photo_paths()
    with vx.serve(repo) as server:
        assert server.is_ready()
        answers = []
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            client = vx.Client(url, protocol=protocol, timeout=30)
            assert {"vit", "vit_image", "emb", "emb_image"} <= set(client.ready_models())
            tops = client.classify(images, model="vit_image", top_k=2)
            assert len(tops) == len(images) and all(len(t.labels) == 2 for t in tops)
            (vector,) = client.embed(images[:1], model="emb_image")
            assert vector.shape == (vx.get_spec("test_vit").arch.embed_dim,)
            answers.append(([t.indices for t in tops], vector.round(4).tolist()))
            with pytest.raises(ServingError, match="vit_image returns classes, not detections"):
                client.detect(images, model="vit_image")
        assert answers[0] == answers[1]  # the same answers whichever protocol asks
    assert not server.running  # stopped on leaving the block
