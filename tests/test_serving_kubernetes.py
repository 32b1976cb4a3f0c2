"""`vitexport k8s`: every manifest checked against KServe's CRD schemas (../shared/kserve, from KServe's repository)
and Kubernetes' own (kubernetes-validate, offline), the serving image's Dockerfile against what the backends import,
and the manifests' models against what the real local Triton serves from the same folder."""

from __future__ import annotations

import ast
import copy
import io
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from decimal import Decimal
from modulefinder import ModuleFinder
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import KubernetesError
from vitexport.serving import kubernetes as k8s
from vitexport.serving import kubernetes_image as k8s_image
from vitexport.serving import kubernetes_settings
from vitexport.serving.config import ServingBackend
from vitexport.serving.repository import add_model
from vitexport.serving.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
K8S_VERSION = "1.30.0"  # the Kubernetes API the core objects are checked against


def kserve_dir() -> Path:
    """KServe's CRDs: `shared/kserve` beside the checkout (CI: a fresh clone with shared/ beside it), or beside the
    main checkout of a git worktree."""
    candidates = [ROOT.parent / "shared" / "kserve"]
    git = ROOT / ".git"
    if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        candidates.append(gitdir.parents[2].parent / "shared" / "kserve")
    if os.environ.get("VITEXPORT_KSERVE_CRDS"):
        candidates.insert(0, Path(os.environ["VITEXPORT_KSERVE_CRDS"]))
    for c in candidates:
        if (c / "serving.kserve.io_inferenceservices.yaml").is_file():
            return c
    missing = f"KServe's CRDs not found in {', '.join(map(str, candidates))}"
    if os.environ.get("CI") == "true":  # CI lays shared/ beside the clone: missing there is a broken checkout
        pytest.fail(missing)
    pytest.skip(f"{missing} (a plain clone; set VITEXPORT_KSERVE_CRDS, or CI=true to require them)")


def strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it with field validation Strict: an unknown field is an error
    (structural schemas prune them silently otherwise), except where the schema keeps unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schemas():
    out = {}
    for path in kserve_dir().glob("serving.kserve.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            out[key] = strict(version["schema"]["openAPIV3Schema"])
    return out


def check_crd(obj: dict, schemas: dict) -> None:
    jsonschema.validate(obj, schemas[(obj["apiVersion"], obj["kind"])], cls=jsonschema.Draft7Validator)
    name = obj["metadata"]["name"]
    assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def pod_of(runtime: dict, isvc: dict) -> dict:
    """The Pod KServe makes of a runtime and an InferenceService (its container merge: the model's args appended to
    the runtime's, the model's resources over the runtime's), checked as a core object."""
    container = copy.deepcopy(runtime["spec"]["containers"][0])
    model = isvc["spec"]["predictor"]["model"]
    container["args"] = container["args"] + model["args"]
    container["resources"] = model["resources"]
    volumes = runtime["spec"]["volumes"] + [{"name": "kserve-provision-location", "emptyDir": {}}]
    container["volumeMounts"] = container["volumeMounts"] + [
        {"name": "kserve-provision-location", "mountPath": k8s_image.MODEL_STORE, "readOnly": True}
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{isvc['metadata']['name']}-predictor-0", "annotations": isvc["metadata"]["annotations"]},
        "spec": {"containers": [container], "volumes": volumes},
    }


class _WithoutTypeChecking(ast.NodeTransformer):
    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return node.orelse or [ast.Pass()]
        return node


class RuntimeImports(ModuleFinder):
    """modulefinder, less the imports under `if TYPE_CHECKING:`, which never run (vitexport/__init__.py names its
    whole API there for type checkers)."""

    def load_module(self, fqname, fp, pathname, file_info):
        if file_info[2] == 1:  # modulefinder's _PY_SOURCE
            tree = ast.fix_missing_locations(_WithoutTypeChecking().visit(ast.parse(fp.read())))
            fp = io.StringIO(ast.unparse(tree))
        return super().load_module(fqname, fp, pathname, file_info)


def tiny_classifier(path: Path) -> Path:
    """An image classifier ONNX in a few nodes (pixels -> mean colour -> 10 logits): served like any model, made
    in milliseconds instead of an export."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository written as `vitexport repo` writes it: a classifier on the Python backend (with its image
    ensemble), and the same model on ONNX Runtime's GPU backend, for the official containers."""
    from vitexport.export.onnx_import import PreprocessFlags, import_onnx

    root = tmp_path_factory.mktemp("k8s")
    flags = PreprocessFlags(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=16, crop_pct=1.0, interpolation="bilinear")
    artifact = import_onnx(tiny_classifier(root / "tiny.onnx"), name="tiny", flags=flags)
    repo = root / "model_repository"
    add_model(repo, artifact, name="test_vit")
    add_model(repo, artifact, name="gpu_vit", backend=ServingBackend.onnxruntime)
    return repo


def generate(repo: Path, out: Path, *args: str) -> dict:
    result = runner.invoke(app, ["k8s", str(repo), "--output", str(out), *args, "--json"])
    assert result.exit_code == 0, result.output
    return {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file()}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--gpu", "--cluster-runtime", "--namespace", "vision", "--storage-uri", "s3://models/model_repository"),
        ("--name", "test_vit_image", "--storage-uri", "gs://b/r", "--cpu", "1500m", "--memory", "3Gi",
         "--min-replicas", "2", "--max-replicas", "2", "--image", "registry.example:5000/vt/triton:7"),
    ],
)  # fmt: skip
def test_every_manifest_passes_the_kserve_and_kubernetes_schemas(repo, tmp_path, crd_schemas, args):
    files = generate(repo, tmp_path / "out", *args)
    kustomization = load(files["kustomization.yaml"])
    assert sorted(kustomization["resources"]) == sorted(f for f in files if f.endswith(".yaml") and "/" not in f
                                                        and f != "kustomization.yaml")  # fmt: skip
    objects = [load(files[f]) for f in kustomization["resources"]]
    texts = [files[f].read_text() for f in kustomization["resources"]]
    assert not any("&id0" in t or "*id0" in t for t in texts)  # plain YAML: no anchors and aliases
    runtime = next(o for o in objects if o["kind"].endswith("ServingRuntime"))
    isvcs = [o for o in objects if o["kind"] == "InferenceService"]
    assert isvcs
    for obj in objects:
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            check_crd(obj, crd_schemas)
        else:
            assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) is not None
    for isvc in isvcs:
        kubernetes_validate.validate(pod_of(runtime, isvc), K8S_VERSION, strict=True)
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
        assert predictor["model"]["protocolVersion"] == "v2"
        assert predictor["minReplicas"] <= predictor["maxReplicas"]
        limits = predictor["model"]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == ("--gpu" in args)
        assert isvc["metadata"]["annotations"]["prometheus.io/port"] == str(k8s.METRICS_PORT)
    container = runtime["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {k8s.HTTP_PORT, k8s.GRPC_PORT, k8s.METRICS_PORT}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsNonRoot"] is True
    image = kustomization["images"][0]
    assert container["image"].startswith(image["name"])
    if "--namespace" in args:
        assert kustomization["namespace"] == "vision"
    if "--name" in args:  # one served model, named by any of its Triton models
        assert [i["metadata"]["name"] for i in isvcs] == ["test-vit"]
        assert isvcs[0]["spec"]["predictor"]["model"]["storageUri"] == "gs://b/r"
        assert image == {"name": "registry.example:5000/vt/triton", "newTag": "7"}


@pytest.mark.parametrize(
    "args", [(), ("--namespace", "vision", "--image", "registry.example:5000/vt/triton:7", "--gpu")]
)
def test_kubectl_kustomize_renders_what_k8s_writes(repo, tmp_path, args):
    """`kubectl kustomize DIR` (what `kubectl apply -k DIR` reads, no cluster needed) renders every resource the
    kustomization lists, with its namespace and image applied."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed (these machines have it: /usr/bin/kubectl)")
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    files = generate(repo, tmp_path / "out", *args)
    kustomization = load(files["kustomization.yaml"])
    rendered = subprocess.run([kubectl, "kustomize", str(tmp_path / "out")], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    written = [load(files[f]) for f in kustomization["resources"]]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in written
    )
    image = kustomization["images"][0]
    for obj in objects:
        if obj["kind"] != "Namespace":  # the one cluster-scoped object: named by it, not in it
            assert obj["metadata"].get("namespace") == kustomization.get("namespace")
        if obj["kind"].endswith("ServingRuntime"):
            (container,) = obj["spec"]["containers"]
            assert container["image"] == f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "--namespace" in args:
        assert [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"] == ["vision"]


def test_a_gpu_deployment_serves_the_gpu_models_and_a_cpu_one_the_others(repo, tmp_path):
    cpu = runner.invoke(app, ["k8s", str(repo), "--output", str(tmp_path / "cpu"), "--json"])
    gpu = runner.invoke(app, ["k8s", str(repo), "--output", str(tmp_path / "gpu"), "--gpu", "--json"])
    import json

    cpu, gpu = json.loads(cpu.output), json.loads(gpu.output)
    assert [s["name"] for s in cpu["served"]] == ["test_vit"] and list(cpu["skipped"]) == ["gpu_vit"]
    assert [s["name"] for s in gpu["served"]] == ["gpu_vit"] and list(gpu["skipped"]) == ["test_vit"]
    assert gpu["served"][0]["models"] == ["gpu_vit", "gpu_vit_image", "gpu_vit_preprocess", "gpu_vit_postprocess"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-replicas", "-1"], "--min-replicas must be 1 or more"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --min-replicas 3"),
        (["--storage-uri", "ftp://host/repo"], "--storage-uri must start with one of s3://, gs://, pvc://, https://"),
        (["--storage-uri", "s3://"], "names no bucket"),
        (["--storage-uri", "s3://b/r\nx"], r"--storage-uri holds '\n' at 8: a URI is printable ASCII, no whitespace"),
        (["--storage-uri", "s3://b/$(id)"], "holds '$', a shell metacharacter"),
        (["--storage-uri", "pvc://claim/../../etc"], "has a '..' segment"),
        (["--cpu", "1e400"], "--cpu '1e400' is over Kubernetes' largest quantity, 9223372036854775.807"),
        (["--memory", "99999999999999999999999999Ei"], "is over Kubernetes' largest quantity"),
        (["--cpu", "1e9999999999"], "the exponent 9999999999 is out of Kubernetes' range"),
        (["--memory", "2K"], "--memory must be a positive Kubernetes quantity"),
        (["--name", "nope"], "not in "),
        (["--name", "gpu_vit"], "add --gpu"),
        (["--namespace", "Vision_1"], "is not a Kubernetes name"),
        (["--cpu", "-2"], "--cpu must be a positive Kubernetes quantity"),
        (["--memory", "lots"], "--memory must be a positive Kubernetes quantity"),
    ],
)
def test_bad_values_are_one_line(repo, tmp_path, args, message):
    result = runner.invoke(app, ["k8s", str(repo), "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("value", "units"),
    [("2", "2"), ("500m", "0.5"), ("4Gi", str(4 << 30)), ("1.5Gi", str(3 << 29)), ("1e3", "1000"), ("2.", "2"),
     (".5", "0.5"), ("+2", "2"), ("1n", "1e-9"), ("3E-3", "0.003"), ("9223372036854775.807", "9223372036854775.807")],
)  # fmt: skip
def test_quantities_are_read_as_kubernetes_reads_them(value, units):
    assert kubernetes_settings.check_quantity("--cpu", value) == Decimal(units)


def test_the_schemas_take_any_quantity_string_so_vitexport_checks_them():
    """kubernetes-validate's schema for a Quantity is any string: it passes what the API server then refuses or caps,
    so the grammar and the bound are checked where `k8s` reads its options."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "i", "resources": {"limits": {"cpu": "1e400", "memory": "lots"}}}]}}  # fmt: skip
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    for what, value in (("--cpu", "1e400"), ("--memory", "lots")):
        with pytest.raises(KubernetesError):
            kubernetes_settings.check_quantity(what, value)


@pytest.mark.parametrize(
    "uri",
    ["s3://b/r", "gs://b/a/b", "pvc://vitexport-models/repo", "https://h.example/repo.tar.gz?X-Sig=a&X-Exp=1",
     "hdfs://namenode/models", "webhdfs://namenode/models", "oci://registry.example/models:1"],
)  # fmt: skip
def test_storage_uris_kserve_reads_are_taken(uri):
    kubernetes_settings.check_storage_uri(uri)


@pytest.mark.parametrize("name", ["9lives", "vit_", "a" * 60])
def test_a_model_name_kubernetes_refuses_is_one_line(repo, tmp_path, name):
    bad = tmp_path / "repo"
    (bad / name).mkdir(parents=True)
    text = (repo / "gpu_vit" / "config.pbtxt").read_text().replace('name: "gpu_vit"', f'name: "{name}"')
    (bad / name / "config.pbtxt").write_text(text)
    result = runner.invoke(app, ["k8s", str(bad), "--output", str(tmp_path / "out"), "--gpu"])
    assert result.exit_code == 1 and "cannot name a Kubernetes InferenceService" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_lock_passes_every_argument_to_tritonserver(tmp_path):
    """The runtime's command, run by a shell as the container runs it, with a stand-in tritonserver that prints its
    arguments: the model-repository API locked with a fresh key, then the runtime's and the model's arguments."""
    fake = tmp_path / "tritonserver"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    runtime = k8s.serving_runtime(k8s.K8sSettings())
    container = runtime["spec"]["containers"][0]
    argv = [*container["command"], *container["args"], "--load-model=a b"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    first, second = (subprocess.run(argv, env=env, capture_output=True, text=True, check=True) for _ in range(2))
    lines = first.stdout.splitlines()
    assert re.fullmatch(rf"--http-restricted-api=model-repository:{k8s.CONTROL_HEADER}=[0-9a-f]{{64}}", lines[0])
    assert lines[1] == lines[0].replace("--http-restricted-api", "--grpc-restricted-protocol")
    assert lines[2:] == [*container["args"], "--load-model=a b"]
    assert second.stdout.splitlines()[0] != lines[0]  # a key per start


def test_the_dockerfile_installs_what_the_backends_import_pinned_as_pyproject(repo, tmp_path):
    files = generate(repo, tmp_path / "out")
    parser = DockerfileParser(path=str(files["image/Dockerfile"]))
    assert parser.baseimage == k8s_image.TRITON_IMAGE == "nvcr.io/nvidia/tritonserver:24.10-py3"
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users[-1] == "1000:1000"  # non-root
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    installed = dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", runs))
    copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
    assert parser.envs["PYTHONPATH"] == k8s_image.IMAGE_ROOT

    # What the Python-backend models import, found independently of the generator: modulefinder follows every
    # import (function-level too) through this checkout's vitexport, and what it cannot find without
    # site-packages is a third-party module.
    ours, third = set(), set()
    for backend in sorted((ROOT / "serving" / "backends").glob("*.py")):
        if backend.name == "__init__.py":  # the list of the model files, not one of them
            continue
        # The standard library is known by name, not followed; the modules only models `k8s` refuses import are not.
        finder = RuntimeImports(path=[str(ROOT)], excludes=sorted(k8s_image.REFUSED_ONLY))
        finder.run_script(str(backend))
        ours |= {m for m in finder.modules if m.startswith("vitexport")}
        third |= {m.split(".")[0] for m in finder.badmodules if m.split(".")[0] not in sys.stdlib_module_names}
    third -= {"vitexport", "triton_python_backend_utils", "__main__"}
    assert {"numpy", "PIL", "onnxruntime", "openvino"} <= third
    for module in third:
        assert k8s_image.DISTRIBUTIONS[module] in installed, module
    for module in ours:  # each copied into the image, byte for byte, and parsed by the container's Python 3.10
        rel = Path(*module.split(".")).with_suffix(".py")
        if not (ROOT / rel).is_file():
            rel = Path(*module.split("."), "__init__.py")
        source = (ROOT / rel).read_bytes()
        assert files[f"image/{rel.as_posix()}"].read_bytes() == source
        compile(source, str(rel), "exec", flags=0, dont_inherit=True, _feature_version=k8s_image.TRITON_PYTHON[1])
        assert any(rel.parts[0] == src and dest == f"{k8s_image.IMAGE_ROOT}/{src}" for src, dest in copies)
    assert sorted(ours) == k8s_image.backend_imports()[0]

    # Pinned as pyproject's serving-image extra, and within pyproject's own ranges.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {Requirement(r).name.lower(): str(Requirement(r).specifier).removeprefix("==")
            for r in pyproject["optional-dependencies"]["serving-image"]}  # fmt: skip
    assert installed == pins == k8s_image.IMAGE_REQUIREMENTS
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier for r in pyproject["dependencies"]}
    ranges |= {
        Requirement(r).name.lower(): Requirement(r).specifier for r in pyproject["optional-dependencies"]["cpu-opt"]
    }
    for name, version in installed.items():
        assert ranges[name].contains(version), (name, version, ranges[name])


def test_a_model_preprocessing_on_torchvision_is_refused_in_one_line(repo, tmp_path):
    """transformers' torchvision processors need torch, which the serving image does not carry: refused, not shipped
    to fail in the cluster."""
    import json

    from vitexport.serving import config as cfg

    copy_ = shutil.copytree(repo, tmp_path / "repo")
    path = copy_ / "test_vit_preprocess" / "config.pbtxt"
    config = cfg.parse(path.read_text())
    pre = json.loads(config.parameters["preprocess"].string_value) | {"resize_backend": "torchvision"}
    config.parameters["preprocess"].string_value = json.dumps(pre)
    path.write_text(cfg.render(config))
    result = runner.invoke(app, ["k8s", str(copy_), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "test_vit_preprocess preprocesses on torchvision" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_manifests_name_what_the_local_triton_serves_from_the_same_folder(repo, tmp_path):
    """The manifests are generated from the very folder the real Triton serves: the CPU InferenceServices' models
    are the models Triton reports ready (less the Python parts of the GPU ones, which it also runs here), and their
    configs' hash is of the config.pbtxt files Triton read."""

    def load_models(out: Path) -> tuple[list[dict], list[str]]:
        isvcs = [load(p) for f, p in generate(repo, out, *(["--gpu"] if "gpu" in out.name else [])).items()
                 if f.startswith("inferenceservice-")]  # fmt: skip
        return isvcs, sorted(
            a.removeprefix("--load-model=") for i in isvcs for a in i["spec"]["predictor"]["model"]["args"]
        )

    isvcs, cpu = load_models(tmp_path / "cpu")
    _, gpu = load_models(tmp_path / "gpu")
    with TritonServer(repo, startup_timeout=150) as server:
        ready = []
        for model in sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
            try:
                with urllib.request.urlopen(f"http://{server.endpoints.http}/v2/models/{model}/ready", timeout=5):
                    ready.append(model)
            except OSError:
                pass
    assert cpu == sorted(set(ready) - set(gpu))
    assert set(server.skipped) <= set(gpu)  # what only the official GPU container runs
    for isvc in isvcs:
        models = isvc["metadata"]["annotations"]["vitexport/triton-models"].split(",")
        assert isvc["metadata"]["annotations"]["vitexport/configs-sha256"] == k8s.configs_sha256(repo, models)
