"""The task plug-ins and the variant table: every task fulfils its contract, no stage branches on a task's name,
and every variant row is one the stages can build, serve and benchmark."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from vitexport.artifacts import Format, Precision, load_artifact
from vitexport.errors import VitExportError
from vitexport.preprocess import PreprocessConfig
from vitexport.tasks import TASKS, get_task
from vitexport.variants import DEPLOYABLE, VARIANTS, Runtime, ServingBackend, get_variant, parse_variants

ROOT = Path(__file__).resolve().parents[1]
STAGES = [ROOT / "export", ROOT / "serving", ROOT / "benchmarks", ROOT / "vitexport" / "cli"]


@pytest.mark.parametrize("task", TASKS.values(), ids=list(TASKS))
def test_every_task_fulfils_its_contract(task):
    assert get_task(task.name) is task
    names = task.output_names()
    assert names and len(set(names)) == len(names)
    for precision in Precision:
        assert task.budget(precision.value).to_dict()  # a budget for every precision a variant can have
    batches = task.random_inputs(32, np.random.default_rng(0))
    assert batches and all(x.shape[1:] == (3, 32, 32) and x.dtype == np.float32 for x, _ in batches)
    assert all((mask is None) == (task.mask_input is None) for _, mask in batches)
    inputs, outputs = task.model_io(input_name="pixel_values", output_names=names, size=32, num_classes=7)
    assert inputs[0].dims == (3, 32, 32) and [o.name for o in outputs] == list(names)
    assert (len(inputs) == 2) == (task.mask_input is not None)
    answer = task.ensemble_outputs(outputs, task.check_settings({}, 7))
    assert answer and all(spec.dtype in ("FP32", "INT64", "BYTES") for spec in answer)
    if task.postprocess is not None:  # the served post-processing model it names exists
        assert (ROOT / "serving" / "backends" / task.postprocess).is_file()
    labels = task.default_labels(1000 if task.name != "detection" else 91)
    assert labels is None or (ROOT / "serving" / "labels" / labels).is_file()
    with pytest.raises(VitExportError, match=r"no .*budget for precision 'int4'"):
        task.budget("int4")


def test_unknown_task_is_one_line():
    with pytest.raises(VitExportError, match="unknown task 'segmentation'; known: classification, features"):
        get_task("segmentation")


# Names that are not tasks though they read as one, each defined once: Triton's classification extension.
NOT_TASKS = {"CLASSIFICATION_EXTENSION"}


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    exempt = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in NOT_TASKS for t in node.targets)
    }
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in TASKS and id(n) not in exempt
    ]


def test_no_stage_branches_on_a_task_name():
    """The stages, the benchmark and the CLI ask the task (vitexport.tasks) what to do; a task's name written as a
    string there is a branch that the next task would have to find and extend."""
    found = [
        f"{path.relative_to(ROOT)}:{line} {value!r}"
        for folder in STAGES
        for path in sorted(folder.rglob("*.py"))
        if "scripts" not in path.parts
        for line, value in _literals(path)
    ]
    assert not found, found


def test_a_sidecar_from_before_tasks_keeps_its_meaning(tmp_path):
    """Schema-1 sidecars said "classification" with head "features" for an embedding model."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not checked: no files recorded")
    sidecar = {
        "path": "m.onnx",
        "format": "onnx",
        "model": "test_vit",
        "preprocess": PreprocessConfig(32).to_dict(),
        "num_classes": 64,
        "output_names": ["embeddings"],
        "head": "features",
        "task": "classification",
    }
    (tmp_path / "m.onnx.json").write_text(json.dumps(sidecar))
    assert load_artifact(model).task == "features"


def test_the_variant_table_is_consistent():
    from vitexport.bench.runners import BenchBackend

    keys = [v.key for v in VARIANTS]
    assert len(set(keys)) == len(keys)
    for v in VARIANTS:
        assert v.format in v.serving_backend.formats  # its backend serves its file
        assert v.bench_row is None or BenchBackend(v.bench_row).variant is v
        assert get_variant(v.runtime, v.precision) is v
    assert [v.key for v in DEPLOYABLE] == ["openvino-int8", "openvino-bf16", "onnxruntime-int8", "onnxruntime-fp32"]
    assert all(v.runtime is not Runtime.tensorrt and v.format is not Format.tensorrt for v in DEPLOYABLE)
    assert ServingBackend.for_format(Format.openvino) is ServingBackend.python_openvino


def test_variant_lookups_fail_in_one_line():
    with pytest.raises(VitExportError, match="no onnxruntime bf16 variant: onnxruntime makes int8, fp32, fp16"):
        get_variant("onnxruntime", "bf16")
    with pytest.raises(
        VitExportError, match=r"--runtimes takes RUNTIME-PRECISION items such as openvino-int8, .*; not openvino-int4"
    ):
        parse_variants("openvino-int4")
    assert [v.key for v in parse_variants("onnxruntime-fp32, openvino-int8,onnxruntime-fp32")] == [
        "onnxruntime-fp32",
        "openvino-int8",
    ]
