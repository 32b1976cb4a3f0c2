"""`vitexport import` of the folder Hugging Face leaves: `model.onnx` beside `save_pretrained`'s `config.json` and
`preprocessor_config.json`. The graph is written as Optimum writes it (TorchScript export, every input dim symbolic:
batch_size, num_channels, height, width; outputs under transformers' names), so these tests run without Optimum;
tests/test_serving_hugging_face.py runs Optimum itself. No flags: labels from id2label, the task from the head, the
size from the preprocessing (checked by running the graph); every conflict is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _parity import perturbed
from typer.testing import CliRunner

from vitexport.artifacts import load_artifact
from vitexport.cli import app
from vitexport.errors import ArtifactError
from vitexport.export.onnx_import import PreprocessFlags, import_onnx
from vitexport.ort import ort_session

runner = CliRunner()
CLASSES = 12  # past 10, so that id2label's "10" and "11" sort by index, not as strings
VIT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8)


class Outputs(torch.nn.Module):
    """A transformers model answering a tuple of the named fields of its output, as Optimum's export wraps it."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x):
        out = self.model(pixel_values=x)
        return tuple(out[n] for n in self.names)


def optimum_like_export(model, folder, outputs: list[str], size: int) -> None:
    """model.onnx as Optimum 2.1 writes it for transformers' vision models (checked against its real output)."""
    dims = {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"}
    torch.onnx.export(
        Outputs(model, outputs),
        (torch.randn(1, 3, size, size),),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=outputs,
        dynamic_axes={"pixel_values": dims, **{o: {0: "batch_size"} for o in outputs}},
        opset_version=18,
    )


@pytest.fixture(scope="module")
def vit_folder(transformers, tmp_path_factory):
    """A perturbed ViTForImageClassification, id2label written in a shuffled order, with DeiT's processor (resize to
    40 x 40, crop 32) beside it: (the model, the folder)."""
    folder = tmp_path_factory.mktemp("hf") / "my_vit"
    names = {i: f"kind {i}" for i in range(CLASSES)}
    id2label = dict(sorted(names.items(), key=lambda kv: str(kv[0])))  # "0", "1", "10", "11", "2", ...
    config = transformers.ViTConfig(image_size=32, num_labels=CLASSES, id2label=id2label, **VIT)
    model = perturbed(transformers.ViTForImageClassification(config))
    model.save_pretrained(folder)
    processor = transformers.DeiTImageProcessorPil(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}
    )
    processor.save_pretrained(folder)
    optimum_like_export(model, folder, ["logits"], 32)
    return model, folder


@pytest.fixture
def folder(vit_folder, tmp_path):
    """A fresh copy of the ViT folder (import writes a sidecar into it)."""
    return shutil.copytree(vit_folder[1], tmp_path / "my_vit")


def _edit(path, **changes):
    d = json.loads(path.read_text())
    path.write_text(json.dumps(d | changes))


def test_the_folder_imports_with_no_flags(vit_folder, folder):
    model, _ = vit_folder
    artifact = import_onnx(folder)
    assert artifact.path == folder / "model.onnx" and load_artifact(folder / "model.onnx") == artifact
    assert (artifact.model, artifact.task, artifact.num_classes) == ("my_vit", "classification", CLASSES)
    assert artifact.labels == tuple(f"kind {i}" for i in range(CLASSES))  # by index, though written "0", "1", "10"
    assert (artifact.input_name, artifact.output_names, artifact.batch_size) == ("pixel_values", ("logits",), None)
    assert artifact.preprocess.input_size == 32 and artifact.preprocess.mean == (0.5, 0.5, 0.5)
    assert [r["batch_size"] for r in artifact.validation["runs"]] == [1, 2]  # run at the size the processor makes
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (got,) = ort_session(artifact.path).run(["logits"], {"pixel_values": x})
    with torch.inference_mode():
        expected = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_the_file_reads_the_files_beside_it_and_flags_override(folder, tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(f"mine {i}" for i in range(CLASSES)))
    args = ["import", str(folder / "model.onnx"), "--labels", str(tmp_path / "labels.txt"), "--name", "v", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    artifact = load_artifact(folder / "model.onnx")
    assert artifact.model == "v" and artifact.labels[11] == "mine 11" and artifact.preprocess.input_size == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id2label": {str(i): f"k{i}" for i in range(CLASSES) if i != 4}}, "has no name for index 4"),
        ({"id2label": {str(i): f"k{i}" for i in range(5)}}, "names 5 classes (id2label); the graph has 12 outputs"),
        ({"id2label": {"a": "x"}}, "has a key that is not a class index"),
        ({"num_channels": 1}, "says num_channels 1"),
        ({"architectures": ["DetrForObjectDetection"]}, "DetrForObjectDetection is a detector"),
        ({"architectures": ["ViTForMaskedImageModeling"]}, "says ViTForMaskedImageModeling: import takes"),
        ({"architectures": ["ViTModel"]}, "ViTModel has no head and answers logits N x 12"),
    ],
)
def test_what_the_config_contradicts_or_import_cannot_serve_is_one_line(folder, change, message):
    _edit(folder / "config.json", **change)
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (folder / "model.onnx.json").exists()


def test_flags_that_contradict_the_files_are_one_line(folder, tmp_path):
    result = runner.invoke(app, ["import", str(folder), "--embeddings"])
    assert (
        result.exit_code == 1 and "--embeddings, but" in result.output and "ViTForImageClassification" in result.output
    )
    (tmp_path / "labels.txt").write_text("a\nb\n")
    result = runner.invoke(app, ["import", str(folder), "--labels", str(tmp_path / "labels.txt")])
    assert result.exit_code == 1 and "names 2 classes; the model has 12 outputs" in result.output
    # The processor's geometry is whole: a size or crop fraction of the flags' would half-apply it.
    result = runner.invoke(app, ["import", str(folder), "--size", "40"])
    assert result.exit_code == 1 and "--size 40, but preprocessor_config.json makes 32 x 32 images" in result.output
    result = runner.invoke(app, ["import", str(folder), "--crop-pct", "0.9"])
    assert result.exit_code == 1 and "--crop-pct, but preprocessor_config.json resizes to [40, 40]" in result.output
    assert not (folder / "model.onnx.json").exists()
    result = runner.invoke(app, ["import", str(folder), "--size", "32", "--mean", "0.1,0.2,0.3", "--json"])
    assert result.exit_code == 0 and load_artifact(folder / "model.onnx").preprocess.mean == (0.1, 0.2, 0.3)


def test_a_size_the_graph_cannot_take_is_refused_by_running_it(folder):
    # The processor says 48 px; Optimum's symbolic dims do not refuse it, ONNX Runtime does (32 px position table).
    _edit(folder / "preprocessor_config.json", crop_size={"height": 48, "width": 48}, size={"height": 56, "width": 56})
    with pytest.raises(ArtifactError, match="fails on a 1 x 3 x 48 x 48 input"):
        import_onnx(folder)


def test_a_folder_without_the_graph_is_one_line(tmp_path):
    result = runner.invoke(app, ["import", str(tmp_path)])
    assert result.exit_code == 1 and "holds no model.onnx" in result.output


def test_a_bare_model_with_a_pooled_output_imports_as_embeddings(transformers, tmp_path):
    config = transformers.ViTConfig(image_size=32, **VIT)
    model = perturbed(transformers.ViTModel(config, add_pooling_layer=True))
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    optimum_like_export(model, tmp_path, ["last_hidden_state", "pooler_output"], 32)
    artifact = import_onnx(tmp_path)
    assert (artifact.task, artifact.output_names, artifact.num_classes, artifact.labels) == (
        "features",
        ("pooler_output",),
        32,
        None,
    )


def test_deploy_takes_the_imported_folder_for_its_graph(folder, tmp_path):
    """`vitexport deploy out/` after `vitexport import out/`: the folder stands for its model.onnx, anything else for
    itself (a registered name, a file, a folder without the graph)."""
    from vitexport.pipeline import check_deploy, model_in_folder

    import_onnx(folder)
    assert model_in_folder(folder) == folder / "model.onnx"
    assert model_in_folder("deit_tiny") == "deit_tiny" and model_in_folder(tmp_path) == tmp_path
    check_deploy(folder)  # no "unknown model" for the folder


@pytest.mark.parametrize(
    "written_by, kind, flag, backend",
    [
        ("5.25.0", "DeiTImageProcessor", None, "torchvision"),  # 5's AutoImageProcessor loads torchvision for it
        ("4.57.6", "DeiTImageProcessor", None, "pil"),  # 4's (Optimum's) loads Pillow
        ("4.57.6", "DeiTImageProcessorFast", None, "torchvision"),
        ("5.25.0", "DeiTImageProcessorPil", None, "pil"),  # a type named for its backend is that backend
        ("5.25.0", "DeiTImageProcessor", "pil", "pil"),  # --hf-backend, as AutoImageProcessor(backend=)
        ("4.57.6", "DeiTImageProcessor", "torchvision", "torchvision"),
    ],
)
def test_the_processor_backend_is_the_one_the_writing_transformers_loads(folder, written_by, kind, flag, backend):
    _edit(folder / "config.json", transformers_version=written_by)
    _edit(folder / "preprocessor_config.json", image_processor_type=kind)
    assert import_onnx(folder, hf_backend=flag).preprocess.resize_backend == backend


def test_a_backend_import_cannot_use_is_one_line(folder, tmp_path):
    with pytest.raises(ArtifactError, match="--hf-backend must be one of pil, torchvision, not 'bogus'"):
        import_onnx(folder, hf_backend="bogus")
    bare = tmp_path / "bare.onnx"
    shutil.copy(folder / "model.onnx", bare)
    with pytest.raises(ArtifactError, match="--hf-backend is an image processor's"):
        import_onnx(bare, hf_backend="pil", flags=PreprocessFlags(mean=(0.5,) * 3, std=(0.5,) * 3))
