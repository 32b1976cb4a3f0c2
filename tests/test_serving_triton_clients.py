"""Triton's own example clients against what `vitexport repo` writes, on a real Triton over HTTP and gRPC: the
contract `image_client.py` and `ensemble_image_client.py` (triton-inference-server/client, src/python/examples) rely
on, and exactly the requests they send, made here with tritonclient; and both scripts themselves, run unchanged
where a copy is at hand (`shared/triton-client/` beside the checkout, or VITEXPORT_TRITON_EXAMPLES; the repository
does not copy them; image_client.py's HTTP path also needs `attrdict`, from the venv or VITEXPORT_ATTRDICT):

- image_client: one input of 3 dims with `format` FORMAT_NCHW or FORMAT_NHWC, one FP32 vector output, the batch from
  `max_batch_size`; pixels resized with Pillow's bilinear filter, scaled NONE (0..255), INCEPTION (-1..1) or VGG
  (mean subtracted), a batch of -b images, `class_count` -c, sent plain, async and (gRPC) streamed; it prints
  "value (index) = label" of each "value:index:label" string.
- ensemble_image_client: one input, the encoded files as a BYTES batch (N, 1) of at most `max_batch_size`,
  `class_count` -c on every output the metadata lists, each printed as "value (index) = label": so every output must
  be numeric (the extension on a string kills Triton 2.51) and labelled by class. The image ensemble answers one
  output, the softmax of every class (`probabilities`, with its labels); our client asks the same extension."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from _photos import photo_paths, photos
from PIL import Image
from test_serving_kubernetes import tiny_classifier

from vitexport.errors import ServingError
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image
from vitexport.serving.remote import Client
from vitexport.serving.repository import add_model
from vitexport.serving.server import TritonServer

PROTOCOLS = ("http", "grpc")
ROOT = Path(__file__).resolve().parents[1]
VGG_MEAN = np.array((123, 117, 104), dtype=np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vitexport.export.onnx_import import PreprocessFlags, import_onnx

    root = tmp_path_factory.mktemp("triton_clients")
    flags = PreprocessFlags(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=16, crop_pct=1.0, interpolation="bilinear")
    labels = tuple(f"thing {i}" for i in range(10))
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    artifact = import_onnx(tiny_classifier(root / "tiny.onnx"), name="tiny", flags=flags, labels=root / "labels.txt")
    repo = root / "model_repository"
    add_model(repo, artifact, name="tiny")
    add_model(repo, artifact, name="old", top_k=3)
    as_vitexport_0_1_wrote_it(repo, "old", 3)
    with TritonServer(repo, startup_timeout=150) as server:
        yield server, artifact, labels


# The post-processing of a classifier's image ensemble as vitexport 0.1 wrote it: logits -> top-k labels, scores and
# indices (its repositories hold their own copy of it, as every version folder holds its model.py).
TOP_K_0_1 = """
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.k = int(params["top_k"])
        labels = (Path(args["model_repository"]) / params["labels"]).read_text().splitlines()
        self.labels = np.array([label.encode() for label in labels], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy().astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            top = np.argsort(-probs, axis=1, kind="stable")[:, : self.k]
            outputs = [
                pb_utils.Tensor("labels", self.labels[top]),
                pb_utils.Tensor("scores", np.take_along_axis(probs, top, axis=1).astype(np.float32)),
                pb_utils.Tensor("indices", top.astype(np.int64)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""


def as_vitexport_0_1_wrote_it(repo: Path, name: str, k: int) -> None:
    """Turn a classifier's image ensemble into what vitexport 0.1 wrote: its top k as outputs labels (BYTES),
    scores and indices, no probabilities, no top_k parameter on the ensemble."""
    from vitexport.serving import config as cfg

    outputs = [("labels", cfg.pb.TYPE_STRING), ("scores", cfg.pb.TYPE_FP32), ("indices", cfg.pb.TYPE_INT64)]
    for part in (f"{name}_postprocess", f"{name}_image"):
        config = cfg.read_config(repo / part)
        del config.output[:]
        config.output.extend(cfg.pb.ModelOutput(name=n, data_type=t, dims=[k]) for n, t in outputs)
        config.ClearField("response_cache")
        if config.platform == "ensemble":
            del config.parameters["top_k"]
            step = config.ensemble_scheduling.step[-1]
            step.output_map.clear()
            step.output_map.update({n: n for n, _ in outputs})
        else:
            (repo / part / "1" / "model.py").write_text(TOP_K_0_1)
        (repo / part / "config.pbtxt").write_text(cfg.render(config))


def module_of(protocol: str):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return grpcclient if protocol == "grpc" else httpclient


def client_of(server, protocol: str, concurrency: int = 1):
    if protocol == "grpc":
        return module_of(protocol).InferenceServerClient(url=server.endpoints.grpc)
    return module_of(protocol).InferenceServerClient(url=server.endpoints.http, concurrency=concurrency)


def metadata_and_config(client, protocol: str, model: str) -> tuple[dict, dict]:
    """The model's metadata and config as plain dicts, as each protocol's client returns them."""
    from google.protobuf.json_format import MessageToDict

    metadata, config = client.get_model_metadata(model), client.get_model_config(model)
    if protocol == "grpc":
        keep = {"preserving_proto_field_name": True}
        return MessageToDict(metadata, **keep), MessageToDict(config.config, **keep)
    return metadata, config


def image_client_pixels(path: Path, c: int, h: int, w: int, scaling: str) -> np.ndarray:
    """image_client.py's preprocessing for an FP32 NCHW input."""
    with Image.open(path) as image:
        typed = np.array(image.convert("RGB").resize((w, h), Image.BILINEAR)).astype(np.float32)
    scaled = {"INCEPTION": typed / 127.5 - 1, "VGG": typed - VGG_MEAN}.get(scaling, typed)
    return np.transpose(scaled, (2, 0, 1))


def check_classes(answer: np.ndarray, logits: np.ndarray, labels: tuple[str, ...], count: int) -> None:
    """Each row's "value:index:label" strings are the `count` best logits, best first, labelled by labels.txt."""
    assert answer.shape == (len(logits), count)
    for row, expected in zip(answer, logits, strict=True):
        fields = [(x.decode() if isinstance(x, bytes) else str(x)).split(":") for x in row]
        assert all(len(f) == 3 for f in fields), fields
        indices = [int(f[1]) for f in fields]
        assert indices == list(np.argsort(-expected, kind="stable")[:count])
        np.testing.assert_allclose([float(f[0]) for f in fields], expected[indices], rtol=1e-4, atol=1e-5)
        assert [f[2] for f in fields] == [labels[i] for i in indices]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_model_meets_image_clients_contract(served, protocol):
    server, _, _ = served
    metadata, config = metadata_and_config(client_of(server, protocol), protocol, "tiny")
    assert len(metadata["inputs"]) == len(config["input"]) == 1 and len(metadata["outputs"]) == 1
    assert metadata["outputs"][0]["datatype"] == "FP32"
    assert config["input"][0]["format"] == "FORMAT_NCHW"
    assert int(config["max_batch_size"]) > 0 and len(metadata["inputs"][0]["shape"]) == 3 + 1
    assert [int(d) for d in metadata["outputs"][0]["shape"][1:]] == [10]  # a vector of classes
    assert config["output"][0]["label_filename"] == "labels.txt"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("scaling", "batch"), [("NONE", 1), ("INCEPTION", 3), ("VGG", 2)])
def test_image_client_requests_are_answered_with_labels(served, protocol, scaling, batch):
    server, artifact, labels = served
    module, client = module_of(protocol), client_of(server, protocol)
    metadata, _ = metadata_and_config(client, protocol, "tiny")
    c, h, w = (int(d) for d in metadata["inputs"][0]["shape"][1:])
    paths = sorted(photo_paths())
    pixels = np.stack([image_client_pixels(paths[i % len(paths)], c, h, w, scaling) for i in range(batch)])
    tensor = module.InferInput(metadata["inputs"][0]["name"], list(pixels.shape), metadata["inputs"][0]["datatype"])
    tensor.set_data_from_numpy(pixels)
    output = module.InferRequestedOutput(metadata["outputs"][0]["name"], class_count=3)
    result = client.infer("tiny", [tensor], outputs=[output])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    check_classes(result.as_numpy(metadata["outputs"][0]["name"]), logits, labels, 3)


def completed(answers: queue.Queue, result, error) -> None:
    """image_client's callback: tritonclient calls it with `result=` and `error=`."""
    answers.put((result, error))


@pytest.mark.parametrize("mode", ["http_async", "grpc_async", "grpc_streaming"])
def test_image_client_async_and_streaming(served, mode):
    server, artifact, labels = served
    protocol = mode.split("_")[0]
    module, client = module_of(protocol), client_of(server, protocol, concurrency=20)
    pixels = np.stack([image_client_pixels(p, 3, 16, 16, "INCEPTION") for p in sorted(photo_paths())])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    tensor = module.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    outputs = [module.InferRequestedOutput("logits", class_count=3)]
    done: queue.Queue = queue.Queue()
    results = []
    if mode == "http_async":
        handles = [client.async_infer("tiny", [tensor], request_id=str(i), outputs=outputs) for i in range(1, 4)]
        results = [h.get_result() for h in handles]
    elif mode == "grpc_async":
        for i in range(1, 4):
            client.async_infer("tiny", [tensor], partial(completed, done), request_id=str(i), outputs=outputs)
    else:
        client.start_stream(partial(completed, done))
        for i in range(1, 4):
            client.async_stream_infer("tiny", [tensor], request_id=str(i), outputs=outputs)
    while len(results) < 3:
        result, error = done.get(timeout=30)
        assert error is None, error
        results.append(result)
    if mode == "grpc_streaming":
        client.stop_stream()
    for result in results:
        check_classes(result.as_numpy("logits"), logits, labels, 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_our_client_reads_an_image_ensemble_vitexport_0_1_wrote(served, protocol):
    """`infer` against a repository of the previous vitexport: its ensemble's top-k outputs, read as they are (the
    top k it was written with by default, no more); the same classes as this vitexport's ensemble ranks."""
    server = served[0]
    url = server.endpoints.http if protocol == "http" else server.endpoints.grpc
    client = Client(url, protocol=protocol)
    old = client.classify(photos(), model="old_image")
    new = client.classify(photos(), model="tiny_image", top_k=3)
    for a, b in zip(old, new, strict=True):
        assert (a.indices, a.labels) == (b.indices, b.labels) and len(a.indices) == 3
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    with pytest.raises(ServingError, match=r"^old_image returns the top 3; ask for --top-k 3 or fewer$"):
        client.classify(photos(), model="old_image", top_k=4)
    assert len(client.classify(photos()[:1], model="tiny_image")[0].labels) == 5  # the repository's default top_k


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ensemble_image_client_requests_are_answered_with_labels(served, protocol):
    """ensemble_image_client.py's request: the encoded files as one BYTES batch (N, 1), `class_count` 3 on every
    output the metadata lists; each answers the image's 3 most probable classes with their labels."""
    server, artifact, labels = served
    module, client = module_of(protocol), client_of(server, protocol)
    metadata, config = metadata_and_config(client, protocol, "tiny_image")
    assert len(metadata["inputs"]) == len(config["input"]) == 1 and metadata["inputs"][0]["datatype"] == "BYTES"
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("probabilities", "FP32")]
    assert [o.get("label_filename") for o in config["output"]] == ["labels.txt"]
    files = [np.array([data], dtype=bytes) for data in photos()]
    assert len(files) <= int(config["max_batch_size"])
    batch = np.stack(files, axis=0)
    tensor = module.InferInput(metadata["inputs"][0]["name"], list(batch.shape), "BYTES")
    tensor.set_data_from_numpy(batch, **({"binary_data": True} if protocol == "http" else {}))
    extra = {"binary_data": True} if protocol == "http" else {}
    outputs = [module.InferRequestedOutput(o["name"], class_count=3, **extra) for o in metadata["outputs"]]
    result = client.infer("tiny_image", [tensor], outputs=outputs)
    pixels = np.stack([preprocess_image(data, artifact.preprocess) for data in photos()])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    check_classes(result.as_numpy("probabilities"), softmax(logits), labels, 3)
    assert server.is_ready()


def triton_example(name: str) -> Path:
    """One of Triton's example clients, unchanged: in `shared/triton-client` beside the checkout (or beside the main
    checkout of a git worktree), or in the folder VITEXPORT_TRITON_EXAMPLES names; skipped without one (nothing
    from outside the package registries is fetched here)."""
    candidates = [ROOT.parent / "shared" / "triton-client"]
    git = ROOT / ".git"
    if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        candidates.append(Path(git.read_text().split(":", 1)[1].strip()).parents[2].parent / "shared" / "triton-client")
    if os.environ.get("VITEXPORT_TRITON_EXAMPLES"):
        candidates.insert(0, Path(os.environ["VITEXPORT_TRITON_EXAMPLES"]))
    for folder in candidates:
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"Triton's {name} not found in {', '.join(map(str, candidates))} (set VITEXPORT_TRITON_EXAMPLES)")


def printed_classes(report: str) -> dict[str, dict[str, list[tuple[float, int, str]]]]:
    """ensemble_image_client's report: for each file, each output's classes as it prints them, "value (index) = label"
    under the output's name in brackets."""
    files: dict[str, dict[str, list[tuple[float, int, str]]]] = {}
    file = output = ""
    for line in report.splitlines():
        if m := re.fullmatch(r'"(.+)":', line):
            file = m[1]
            files[file] = {}
        elif m := re.fullmatch(r"  \[(.+)\]:", line):
            output = m[1]
            files[file][output] = []
        elif m := re.fullmatch(r"    (\S+) \((\d+)\) = (.*)", line):
            files[file][output].append((float(m[1]), int(m[2]), m[3]))
    return files


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_unchanged_ensemble_image_client_prints_our_clients_top_3(served, protocol, tmp_path):
    """`ensemble_image_client.py -m tiny_image -c 3` on a folder of photographs, as its README runs it: it prints
    PASS and, for each image, 3 classes with their labels, the same as our client's top 3; the server is ready
    after."""
    server, _, labels = served
    script = triton_example("ensemble_image_client.py")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, data in enumerate(photos()):
        (folder / f"photo{i}.img").write_bytes(data)
    url = server.endpoints.http if protocol == "http" else server.endpoints.grpc
    command = [
        sys.executable,
        str(script),
        "-m",
        "tiny_image",
        "-c",
        "3",
        "-u",
        url,
        "-i",
        protocol.upper(),
        str(folder),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("PASS"), done.stdout + done.stderr
    printed = printed_classes(done.stdout)
    files = sorted(folder.iterdir())
    assert list(printed) == [str(f) for f in files]
    ours = Client(url, protocol=protocol).classify(files, model="tiny_image", top_k=3)
    for file, top in zip(files, ours, strict=True):
        assert list(printed[str(file)]) == ["probabilities"]
        classes = printed[str(file)]["probabilities"]
        assert [i for _, i, _ in classes] == list(top.indices) and len(classes) == 3
        assert [label for _, _, label in classes] == list(top.labels) == [labels[i] for i in top.indices]
        np.testing.assert_allclose([value for value, _, _ in classes], top.scores, atol=1e-6)
    assert server.is_ready()


@dataclass(frozen=True)
class ImageClientRun:
    """One run of image_client.py: its protocol, scaling, batch size, class count and request mode."""

    protocol: str  # as its -i takes it: HTTP or gRPC
    scaling: str
    batch: int
    classes: int
    mode: str = ""  # "", "-a" (async) or "--streaming" (gRPC only)

    def args(self) -> list[str]:
        flags = ["-i", self.protocol, "-s", self.scaling, "-b", str(self.batch), "-c", str(self.classes)]
        return flags + ([self.mode] if self.mode else [])


# Every option its README shows, each on both protocols at least once: 6 runs of about a second each.
IMAGE_CLIENT_RUNS = [
    ImageClientRun("HTTP", "NONE", 1, 1),
    ImageClientRun("HTTP", "INCEPTION", 2, 3),
    ImageClientRun("HTTP", "VGG", 1, 3, "-a"),
    ImageClientRun("gRPC", "NONE", 1, 3),
    ImageClientRun("gRPC", "INCEPTION", 2, 3, "-a"),
    ImageClientRun("gRPC", "VGG", 2, 3, "--streaming"),
]


def attrdict_path(protocol: str) -> list[str]:
    """What image_client.py's HTTP path needs on PYTHONPATH beyond what this interpreter has: it turns the JSON
    metadata into objects with `attrdict` (not a tritonclient dependency; pure Python, unmaintained, imported with
    collections patched for Python 3.10+). Nothing when the venv has it; else the folder VITEXPORT_ATTRDICT names
    (`pip install --target DIR attrdict`); else the HTTP runs skip."""
    import importlib.util

    if protocol != "HTTP" or importlib.util.find_spec("attrdict") is not None:
        return []
    folder = os.environ.get("VITEXPORT_ATTRDICT", "")
    if folder and (Path(folder) / "attrdict").is_dir():
        return [folder]
    pytest.skip("image_client.py's HTTP path imports attrdict: pip install attrdict, or VITEXPORT_ATTRDICT=DIR")


def image_client_report(report: str, classes: int) -> dict[int, list[list[tuple[float, int, str]]]]:
    """image_client's report: for each request id, each image's classes as it prints them, "Request N, batch size B"
    and then `classes` lines "    value (index) = label" per image of the batch."""
    requests: dict[int, list[tuple[float, int, str]]] = {}
    request = 0
    for line in report.splitlines():
        if m := re.fullmatch(r"Request (\d+), batch size \d+", line):
            request = int(m[1])
            requests[request] = []
        elif m := re.fullmatch(r"    (\S+) \((\d+)\) = (.*)", line):
            requests[request].append((float(m[1]), int(m[2]), m[3]))
    return {r: [lines[i : i + classes] for i in range(0, len(lines), classes)] for r, lines in requests.items()}


@pytest.mark.parametrize(
    "run", IMAGE_CLIENT_RUNS, ids=lambda r: f"{r.protocol}-{r.scaling}-b{r.batch}-c{r.classes}{r.mode}"
)
def test_the_unchanged_image_client_prints_the_models_classes(served, run, tmp_path):
    """`image_client.py -m tiny` on a folder of photographs, as its README runs it: each request prints, per image of
    its batch, the classes that ONNX Runtime ranks first on the pixels the client sent (its own resize and scaling),
    with labels.txt's label of each index, and PASS; the server is ready after."""
    server, artifact, labels = served
    script = triton_example("image_client.py")
    extra = attrdict_path(run.protocol)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, data in enumerate(photos()):
        (folder / f"photo{i}.img").write_bytes(data)
    url = server.endpoints.http if run.protocol == "HTTP" else server.endpoints.grpc
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, str(script), "-m", "tiny", "-u", url, *run.args(), str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("PASS"), done.stdout + done.stderr
    files = sorted(folder.iterdir())
    pixels = np.stack([image_client_pixels(f, 3, 16, 16, run.scaling) for f in files])
    (logits,) = ort_session(artifact.path).run(None, {"pixel_values": pixels})
    # Batches of -b images in file order, wrapping round to fill the last one: ceil(files / b) requests.
    printed = image_client_report(done.stdout, run.classes)
    assert sorted(printed) == list(range(1, -(-len(files) // run.batch) + 1)), done.stdout
    for request, images in printed.items():
        sent = [((request - 1) * run.batch + j) % len(files) for j in range(run.batch)]
        assert len(images) == run.batch, done.stdout
        for image, classes in zip(sent, images, strict=True):
            indices = [i for _, i, _ in classes]
            assert indices == list(np.argsort(-logits[image], kind="stable")[: run.classes]), done.stdout
            assert [label for _, _, label in classes] == [labels[i] for i in indices]
            np.testing.assert_allclose([v for v, _, _ in classes], logits[image][indices], rtol=1e-4, atol=1e-5)
    assert server.is_ready()
