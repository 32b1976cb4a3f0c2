"""`vitexport import`: ONNX files this tool did not write (timm's own exporter, plain TorchScript-based
`torch.onnx.export`), of a family outside the zoo and one inside it, become artifacts that optimize, repo, a real
Triton and infer take, with their own tensor names."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from vitexport.artifacts import Precision, load_artifact
from vitexport.cli import app
from vitexport.errors import ArtifactError
from vitexport.export.onnx_import import PreprocessFlags, import_onnx
from vitexport.export.optimize import Runtime, optimize
from vitexport.models import create_model
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image

runner = CliRunner()
VITEXPORT = [sys.executable, "-m", "vitexport.cli"]


def _copy(source, folder, companions: bool = True):
    """A fresh copy, without the sidecar an earlier test's import wrote beside the fixture's file; `companions`: with
    the JSON files beside it (import reads a preprocessor_config.json and config.json it finds there)."""
    (folder / source.name).write_bytes(source.read_bytes())
    for extra in source.parent.glob("*.json") if companions else ():
        if not extra.name.endswith(".onnx.json"):
            (folder / extra.name).write_bytes(extra.read_bytes())
    return folder / source.name


IMAGENET = PreprocessFlags(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def timm_convnext(timm, tmp_path_factory):
    """timm's ConvNeXt (not in our zoo) written by timm's own exporter (TorchScript, dynamic batch)."""
    from timm.utils.onnx import onnx_export

    path = tmp_path_factory.mktemp("timm") / "test_convnext.onnx"
    model = timm.create_model("test_convnext", pretrained=False).eval()
    onnx_export(model, str(path), input_size=(3, 64, 64), dynamic_size=False, batch_size=1)
    return model, path


@pytest.fixture(scope="module")
def torchscript_vit(digits, tmp_path_factory):
    """The digits ViT (trained, so the gate's top-1 means something) through plain TorchScript-based
    torch.onnx.export, with names of its own and a dynamic batch, and a Hugging Face preprocessor config that
    resizes to 72 and crops 64 (DeiT's image processor layout)."""
    folder = tmp_path_factory.mktemp("torchscript")
    model = create_model("test_vit_digits", checkpoint=str(digits.checkpoint))
    path = folder / "vit.onnx"
    torch.onnx.export(
        model,
        torch.randn(1, 3, 64, 64),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=17,
    )
    config = {
        "image_processor_type": "DeiTImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"height": 72, "width": 72},
        "crop_size": {"height": 64, "width": 64},
        "do_center_crop": True,
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return model, path


def test_timm_exporter_convnext_imports_with_flags(timm_convnext, tmp_path):
    model, path = timm_convnext
    path = _copy(path, tmp_path)
    artifact = import_onnx(path, flags=IMAGENET)
    assert (artifact.model, artifact.family, artifact.task) == ("test_convnext", "convnet", "classification")
    assert artifact.preprocess.input_size == 64 and artifact.num_classes == model.num_classes
    assert artifact.validation["passed"] and artifact.validation["imported"]
    assert load_artifact(path) == artifact  # the sidecar makes it an artifact every later command reads
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    (got,) = ort_session(path).run(list(artifact.output_names), {artifact.input_name: x})
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_torchscript_export_keeps_its_names_and_reads_hugging_face_preprocessing(torchscript_vit, tmp_path):
    path = _copy(torchscript_vit[1], tmp_path)
    artifact = import_onnx(path, preprocess_config=path.parent / "preprocessor_config.json", name="my_vit")
    assert (artifact.input_name, artifact.output_names, artifact.batch_size) == ("image", ("scores",), None)
    assert artifact.family == "transformer"  # its Softmax says so: the optimizer's INT8 recipes follow
    p = artifact.preprocess
    assert (p.input_size, p.crop_pct, p.interpolation, p.mean) == (64, 64 / 72, "bicubic", (0.5, 0.5, 0.5))
    assert (p.resize, p.crop, p.crop_rounding) == ((72, 72), True, "floor")  # DeiT's: a 72 x 72 warp, then the crop


def test_an_imported_model_is_optimized_and_gated(torchscript_vit, digits, tmp_path):
    flags = PreprocessFlags(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)  # as the digits ViT trained
    (tmp_path / "digits.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    path = _copy(torchscript_vit[1], tmp_path, companions=False)  # the flags alone say the preprocessing
    source = import_onnx(path, flags=flags, name="my_vit", labels=tmp_path / "digits.txt")
    output = tmp_path / "int8.onnx"
    variant = optimize(source, runtime=Runtime.onnxruntime, precision=Precision.int8, images=digits.test, output=output)
    assert variant.validation["passed"] and variant.quant_method == "dynamic"
    assert variant.validation["accuracy"]["reference_top1"] > 90  # the imported graph is the trained model
    assert variant.fuse_attention == "none"  # an imported graph is fused only when asked
    assert (variant.input_name, variant.output_names) == ("image", ("scores",))
    # What the model is carries over, so a repository of the variant serves the imported class names.
    assert (variant.family, variant.labels, variant.task) == ("transformer", source.labels, "classification")
    assert load_artifact(output).labels[7] == "digit 7"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("two_inputs", "has 2 inputs"),
        ("int_input", "expected float N x 3 x H x W"),
        ("two_outputs", "choose one with --output"),
        ("no_mean", "does not say its mean, std: give --preprocess-config"),
    ],
)
def test_what_is_not_an_image_model_is_one_line(tmp_path, change, message):
    x_type = TensorProto.INT64 if change == "int_input" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", x_type, ["N", 3, 8, 8])]
    if change == "two_inputs":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 8, 8]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 192])]
    nodes = [helper.make_node("Flatten", ["x"], ["y"])]
    if change == "two_outputs":
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 192]))
        nodes.append(helper.make_node("Identity", ["y"], ["z"]))
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    flags = PreprocessFlags() if change == "no_mean" else IMAGENET
    with pytest.raises(ArtifactError, match=message) as e:
        import_onnx(path, flags=flags)
    assert len(str(e.value).splitlines()) == 1
    assert not path.with_name("m.onnx.json").exists()


def test_labels_must_name_every_class(timm_convnext, tmp_path):
    path = _copy(timm_convnext[1], tmp_path)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    args = ["import", str(path), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    result = runner.invoke(app, [*args, "--labels", str(tmp_path / "labels.txt")])
    assert result.exit_code == 1 and "names 2 classes; the model has" in result.output
    bad = runner.invoke(app, ["import", str(path), "--mean", "0.5,0.5", "--std", "0.5,0.5,0.5"])
    assert bad.exit_code == 1 and "--mean takes 3 comma-separated numbers" in bad.output


def test_import_deploy_serve_infer_with_its_own_names_and_labels(timm_convnext, tmp_path):
    """timm's ConvNeXt, imported with its class names, deployed (built, gated on photographs, timed, written with its
    image ensemble) and served by a real Triton: `vitexport infer` over HTTP and gRPC answers ONNX Runtime's top 3
    on the same preprocessed pixels, with the imported labels."""
    from vitexport.serving.server import TritonServer

    model, source = timm_convnext
    path = _copy(source, tmp_path)
    names = [f"thing_{i}" for i in range(model.num_classes)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    args = ["import", str(path), "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--json"]
    result = runner.invoke(app, [*args, "--labels", str(tmp_path / "labels.txt"), "--crop-pct", "1"])
    assert result.exit_code == 0, result.output
    artifact = load_artifact(path)
    assert artifact.labels == tuple(names) and json.loads(result.output)["input_name"] == artifact.input_name

    rng = np.random.default_rng(0)
    image = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(image)
    pixels = preprocess_image(image, artifact.preprocess)[None]
    (logits,) = ort_session(path).run(list(artifact.output_names), {artifact.input_name: pixels})
    expected = [names[i] for i in np.argsort(-logits[0])[:3]]

    repo = tmp_path / "repo"
    # The fp32 candidate only: an imported graph's fp32 variant computes what the file does, so the top 3 must agree
    # exactly (an INT8 one may swap near-ties); deploy's choice among candidates is tested in test_export_deploy.
    args = ["deploy", str(path), "--repo", str(repo), "--name", "convnext", "--runtimes", "onnxruntime-fp32"]
    result = runner.invoke(app, [*args, "--workdir", str(tmp_path / "work"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"] == [
        "convnext",
        "convnext_preprocess",
        "convnext_postprocess",
        "convnext_image",
    ]
    with TritonServer(repo) as server:
        for protocol, url in (("http", server.endpoints.http), ("grpc", server.endpoints.grpc)):
            args = ["infer", str(image), "--url", url, "--protocol", protocol, "--top-k", "3", "--json"]
            result = runner.invoke(app, args)  # the one _image ensemble is found without --model
            assert result.exit_code == 0, result.output
            (answer,) = json.loads(result.stdout)
            assert answer["labels"] == expected


@pytest.mark.integration  # the bench harness
def test_an_imported_file_is_benchmarked_without_torch_peers(timm_convnext, tmp_path):
    from vitexport.export.onnx_macs import onnx_macs

    model, source = timm_convnext
    path = _copy(source, tmp_path)
    artifact = import_onnx(path, flags=IMAGENET)
    out, work = tmp_path / "results", tmp_path / "work"
    args = ["bench", str(path), "--quick", "--backends", "torch,onnxruntime-plain,onnxruntime", "--no-gemm"]
    result = runner.invoke(app, [*args, "--batch-sizes", "2", "--output", str(out), "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench-quick.json").read_text())
    row = data["models"][artifact.model]
    assert row["artifact"] == str(path) and row["resolution"] == 64
    # Counted from the graph's shapes: what timm's model multiplies and adds, its parameters all there.
    assert row["gflop_per_image"] == round(2 * onnx_macs(path, artifact.input_name, 64) / 1e9, 3) > 0
    # The parameters the graph stores: the exporter keeps identical tensors (fresh LayerNorm weights) once.
    assert 0.98 < row["params"] / sum(p.numel() for p in model.parameters()) <= 1
    assert "no PyTorch model" in row["in_process"]["torch"]["reason"]
    for backend in ("onnxruntime-plain", "onnxruntime"):
        assert row["in_process"][backend]["status"] == "ok"
        assert row["in_process"][backend]["batches"]["2"]["gflops"] > 0
    # The variant is built in the work folder: the user's folder holds only what import wrote.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [path.name, path.name + ".json"]
    assert list(work.rglob("*.onnxruntime*-fp32.onnx"))


def _external_data_model(folder):
    """A small image model (N x 3 x 8 x 8 -> N x 10) whose weights are external data in weights.bin."""
    weight = onnx.numpy_helper.from_array(np.ones((192, 10), np.float32), "w")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    return folder / "m.onnx"


@pytest.mark.parametrize("fifo", ["weights.bin", "labels.txt", "preprocessor_config.json"])
def test_a_fifo_is_refused_by_its_type(tmp_path, fifo):
    """`import` whose external data, labels or preprocessing config is a FIFO waited in open() for ever. A process
    of its own, so that a hang is a timeout, not a stuck test run."""
    path = _external_data_model(tmp_path)
    args = [*VITEXPORT, "import", str(path), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]
    if fifo != "weights.bin":
        option = "--labels" if fifo == "labels.txt" else "--preprocess-config"
        args += [option, str(tmp_path / fifo)]
    (tmp_path / fifo).unlink(missing_ok=True)
    os.mkfifo(tmp_path / fifo)
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and f"{tmp_path / fifo} is a FIFO: only regular files are read" in done.stderr, done
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1, done.stderr
    assert not path.with_name("m.onnx.json").exists()
