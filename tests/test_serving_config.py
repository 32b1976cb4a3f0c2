"""Generated Triton configs against saved reference .pbtxt files (tests/data/serving/); every config parses back.

Set VITEXPORT_UPDATE_REFERENCES=1 to rewrite the references after an intended change, then review the diff.
"""

import os
import sys
from pathlib import Path

import pytest

from vitexport.artifacts import ModelArtifact
from vitexport.errors import ServingError
from vitexport.models import get_spec
from vitexport.serving import config as cfg
from vitexport.serving.config import Batching, ServingBackend
from vitexport.tasks import CLASSIFICATION, DETECTION, FEATURES

REFERENCES = Path(__file__).parent / "data" / "serving"
UPDATE = os.environ.get("VITEXPORT_UPDATE_REFERENCES") == "1"


def artifact(fmt="onnx", **changes) -> ModelArtifact:
    spec = get_spec("test_vit")
    a = ModelArtifact(path=Path(f"m.{fmt}"), format=fmt, model=spec.name, preprocess=spec.preprocess, num_classes=1000)
    return a.with_(**changes)


ENGINE = artifact(
    "tensorrt",
    batch_profile=(1, 8, 32),
    compute_capability="8.9",
    details={"profile": {"min": 1, "opt": 8, "max": 32}, "compute_capability": "8.9"},
)


def classifier(backend, a=None, **kw):
    kw.setdefault("batching", Batching(8, (4, 8), 500))
    return cfg.model_config("vit", a or artifact(), backend=backend, model_filename="model.onnx", **kw)


def _postprocess(task, model, name="vit_postprocess", num_classes=1000, **settings):
    outputs = cfg.tensor_specs(model.output)
    return cfg.postprocess_config(name, task, outputs, settings, num_classes=num_classes, max_batch_size=8)


def _ensemble():
    c = classifier(ServingBackend.python_onnxruntime)
    pre = cfg.preprocess_config("vit_preprocess", get_spec("test_vit").preprocess, CLASSIFICATION, max_batch_size=8)
    post = _postprocess(CLASSIFICATION, c, top_k=5)
    return cfg.ensemble_config("vit_image", CLASSIFICATION, c, pre, post)


EMBEDDINGS = artifact(
    output_names=("embeddings",), num_classes=64, task="features"
)  # `--head features`: (N, D) embeddings, D = 64


def _embeddings_ensemble():
    c = classifier(ServingBackend.python_onnxruntime, EMBEDDINGS)
    pre = cfg.preprocess_config("vit_preprocess", get_spec("test_vit").preprocess, FEATURES, max_batch_size=8)
    return cfg.ensemble_config("vit_image", FEATURES, c, pre, None)


DETR = get_spec("test_detr")
DETECTOR = artifact(
    model=DETR.name,
    preprocess=DETR.preprocess,
    num_classes=4,
    output_names=("logits", "pred_boxes"),
    mask_name="pixel_mask",
    task="detection",
)


def _detection_parts():
    c = classifier(ServingBackend.python_onnxruntime, DETECTOR)
    pre = cfg.preprocess_config("detr_preprocess", DETR.preprocess, DETECTION, max_batch_size=8)
    post = _postprocess(DETECTION, c, "detr_postprocess", num_classes=4, top_k=50)
    return c, pre, post


CASES = {
    "python_onnxruntime": lambda: classifier(ServingBackend.python_onnxruntime, instances=2, intra_op_threads=2),
    "python_openvino": lambda: classifier(ServingBackend.python_openvino),
    "onnxruntime_trt_fp16": lambda: classifier(ServingBackend.onnxruntime, tensorrt_accelerator=True),
    "openvino": lambda: cfg.model_config(
        "vit", artifact("openvino"), backend=ServingBackend.openvino, batching=Batching(), model_filename="model.xml"
    ),
    "tensorrt": lambda: cfg.model_config(
        "vit",
        ENGINE,
        backend=ServingBackend.tensorrt,
        batching=cfg.tensorrt_batching(ENGINE.details["profile"]),
        model_filename="model.plan",
    ),
    "tensorrt_multi_cc": lambda: cfg.model_config(
        "vit",
        ENGINE,
        backend=ServingBackend.tensorrt,
        batching=cfg.tensorrt_batching(ENGINE.details["profile"]),
        model_filename="model.plan",
        cc_model_filenames={"8.9": "model.8.9.plan", "8.0": "model.8.0.plan"},
    ),
    "fixed_batch": lambda: classifier(ServingBackend.python_onnxruntime, artifact(batch_size=4)),
    "distilled_all_heads": lambda: classifier(
        ServingBackend.python_onnxruntime, artifact(output_names=("logits", "logits_cls", "logits_dist"))
    ),
    "preprocess": lambda: cfg.preprocess_config(
        "vit_preprocess", get_spec("test_resnet").preprocess, CLASSIFICATION, max_batch_size=8
    ),
    "postprocess": lambda: _postprocess(CLASSIFICATION, classifier(ServingBackend.python_onnxruntime), top_k=5),
    "ensemble": _ensemble,
    "embeddings": lambda: classifier(ServingBackend.python_onnxruntime, EMBEDDINGS),
    "embeddings_ensemble": _embeddings_ensemble,
    "detector": lambda: _detection_parts()[0],
    "detection_preprocess": lambda: _detection_parts()[1],
    "detection_postprocess": lambda: _detection_parts()[2],
    "detection_ensemble": lambda: cfg.ensemble_config("detr_image", DETECTION, *_detection_parts()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_matches_reference_and_parses_back(case):
    config = CASES[case]()
    text = cfg.render(config)
    reference = REFERENCES / f"{case}.pbtxt"
    if UPDATE:
        reference.parent.mkdir(parents=True, exist_ok=True)
        reference.write_text(text)
    assert text == reference.read_text()
    assert cfg.parse(text) == config


def test_reference_details():
    # The points of each backend that the references pin down, stated once more in words.
    trt = cfg.parse((REFERENCES / "tensorrt.pbtxt").read_text())
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 32
    assert list(trt.dynamic_batching.preferred_batch_size) == [8, 32]
    multi = cfg.parse((REFERENCES / "tensorrt_multi_cc.pbtxt").read_text())
    assert dict(multi.cc_model_filenames) == {"8.0": "model.8.0.plan", "8.9": "model.8.9.plan"}
    ort = cfg.parse((REFERENCES / "onnxruntime_trt_fp16.pbtxt").read_text())
    (accelerator,) = ort.optimization.execution_accelerators.gpu_execution_accelerator
    assert ort.platform == "onnxruntime_onnx" and accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert ort.instance_group[0].kind == cfg.pb.ModelInstanceGroup.KIND_GPU
    py = cfg.parse((REFERENCES / "python_onnxruntime.pbtxt").read_text())
    assert py.backend == "python" and py.output[0].label_filename == cfg.LABELS_FILE
    assert py.instance_group[0].count == 2 and py.instance_group[0].kind == cfg.pb.ModelInstanceGroup.KIND_CPU
    fixed = cfg.parse((REFERENCES / "fixed_batch.pbtxt").read_text())
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [4, 3, 64, 64]
    assert not fixed.HasField("dynamic_batching")
    ensemble = cfg.parse((REFERENCES / "ensemble.pbtxt").read_text())
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["vit_preprocess", "vit", "vit_postprocess"]
    assert ensemble.input[0].data_type == cfg.pb.TYPE_STRING
    # Triton's ensemble_image_client.py asks the classification extension on every output and prints its labels:
    # the one output is numeric and labelled by class; the top k is the client's class_count (the default written).
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in ensemble.output] == [
        ("probabilities", cfg.pb.TYPE_FP32, [1000], cfg.LABELS_FILE)
    ]
    assert cfg.parameter(ensemble, "top_k") == "5"


def test_embeddings_have_no_labels_and_their_ensemble_no_top_k():
    model = cfg.parse((REFERENCES / "embeddings.pbtxt").read_text())
    (output,) = model.output
    assert (output.name, list(output.dims), output.label_filename) == ("embeddings", [64], "")
    ensemble = cfg.parse((REFERENCES / "embeddings_ensemble.pbtxt").read_text())
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["vit_preprocess", "vit"]
    (output,) = ensemble.output
    assert (output.name, output.data_type, list(output.dims)) == ("embeddings", cfg.pb.TYPE_FP32, [64])
    assert dict(ensemble.ensemble_scheduling.step[1].output_map) == {"embeddings": "embeddings"}
    assert cfg.task_of_config(model) is FEATURES and cfg.task_of_config(ensemble) is FEATURES


def test_configs_written_before_every_model_said_its_task_are_told_by_their_outputs():
    # Older repositories: classifiers and embedding models carried no vitexport_task (detectors always did).
    for case, task in (("python_onnxruntime", CLASSIFICATION), ("embeddings", FEATURES), ("detector", DETECTION)):
        config = cfg.parse((REFERENCES / f"{case}.pbtxt").read_text())
        assert cfg.task_of_config(config) is task
        if task is not DETECTION:
            del config.parameters[cfg.TASK]
            assert cfg.task_of_config(config) is task
    config = cfg.parse((REFERENCES / "ensemble.pbtxt").read_text())
    config.parameters[cfg.TASK].string_value = "segmentation"
    with pytest.raises(ServingError, match=r"^vit_image: unknown task 'segmentation'; known: classification, "):
        cfg.task_of_config(config)


def test_a_detector_takes_its_mask_and_its_ensemble_returns_padded_detections_and_a_count():
    model = cfg.parse((REFERENCES / "detector.pbtxt").read_text())
    assert [(i.name, i.data_type, list(i.dims)) for i in model.input] == [
        ("pixel_values", cfg.pb.TYPE_FP32, [3, 96, 96]),
        ("pixel_mask", cfg.pb.TYPE_INT64, [96, 96]),
    ]
    assert [(o.name, list(o.dims), o.label_filename) for o in model.output] == [
        ("logits", [-1, 5], ""),  # the queries: -1 (the sidecar does not record them); classes + no-object
        ("pred_boxes", [-1, 4], ""),
    ]
    assert cfg.task_of_config(model) is DETECTION
    assert cfg.task_of_config(classifier(ServingBackend.python_onnxruntime)) is CLASSIFICATION
    pre = cfg.parse((REFERENCES / "detection_preprocess.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in pre.output] == [
        ("pixel_values", [3, 96, 96]),
        ("pixel_mask", [96, 96]),
        ("image_size", [2]),
    ]
    post = cfg.parse((REFERENCES / "detection_postprocess.pbtxt").read_text())
    assert {k: v.string_value for k, v in post.parameters.items()} == {
        "threshold": "0.5",
        "top_k": "50",
        "labels": "labels.txt",
        "inputs": '["logits", "pred_boxes", "image_size"]',  # what the post-processing backend reads
    }
    ensemble = cfg.parse((REFERENCES / "detection_ensemble.pbtxt").read_text())
    assert cfg.task_of_config(ensemble) is DETECTION and ensemble.max_batch_size == 8
    assert [(o.name, o.data_type, list(o.dims)) for o in ensemble.output] == [
        ("boxes", cfg.pb.TYPE_FP32, [-1, 4]),
        ("scores", cfg.pb.TYPE_FP32, [-1]),
        ("labels", cfg.pb.TYPE_STRING, [-1]),
        ("classes", cfg.pb.TYPE_INT64, [-1]),
        ("count", cfg.pb.TYPE_INT64, [1]),
    ]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["detr_preprocess", "vit", "detr_postprocess"]
    assert dict(steps[1].input_map) == {"pixel_values": "_pixel_values", "pixel_mask": "_pixel_mask"}
    assert dict(steps[2].input_map) == {"logits": "_logits", "pred_boxes": "_pred_boxes", "image_size": "_image_size"}
    detector = classifier(ServingBackend.python_onnxruntime, DETECTOR)
    with pytest.raises(ServingError, match=r"^threshold must be in \[0, 1\), got 1$"):
        _postprocess(DETECTION, detector, num_classes=4, threshold=1)
    with pytest.raises(ServingError, match=r"^top-k must be >= 1, got 0$"):
        _postprocess(DETECTION, detector, num_classes=4, top_k=0)
    with pytest.raises(ServingError, match=r"^m\.onnx: a detector returns logits and boxes; it has logits$"):
        classifier(ServingBackend.python_onnxruntime, DETECTOR.with_(output_names=("logits",)))


def test_parse_rejects_what_triton_would():
    with pytest.raises(ServingError, match="not a valid Triton model config"):
        cfg.parse('name: "x"\nmax_batch_sise: 8\n')
    with pytest.raises(ServingError):
        cfg.parse('name: "x"\ninput { data_type: TYPE_FLOAT99 }\n')


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": -1}, "max batch size"),
        ({"max_queue_delay_us": -5}, "queue delay"),
        ({"max_batch_size": 8, "preferred_batch_sizes": (16,)}, "outside 1..8"),
    ],
)
def test_batching_is_checked(kwargs, message):
    with pytest.raises(ServingError, match=message):
        Batching(**kwargs)


def test_tensorrt_batching_follows_the_profile():
    assert cfg.tensorrt_batching({"min": 1, "opt": 4, "max": 4}) == Batching(4, (4,), 1000)
    with pytest.raises(ServingError, match="exceeds the engine profile"):
        cfg.tensorrt_batching({"min": 1, "opt": 8, "max": 16}, Batching(max_batch_size=32))
    with pytest.raises(ServingError, match="accept batch 1"):
        cfg.tensorrt_batching({"min": 2, "opt": 8, "max": 16})


def test_backend_and_format_mismatches_are_refused():
    with pytest.raises(ServingError, match="serves tensorrt models, not onnx"):
        classifier(ServingBackend.tensorrt)
    with pytest.raises(ServingError, match="onnxruntime backend only"):
        classifier(ServingBackend.python_onnxruntime, tensorrt_accelerator=True)
    with pytest.raises(ServingError, match="instance count"):
        classifier(ServingBackend.python_onnxruntime, instances=0)
    with pytest.raises(ServingError, match=r"instance count must be 1\.\.64 \(one process each\), got 100000"):
        classifier(ServingBackend.python_onnxruntime, instances=100_000)  # a process each: was accepted
    with pytest.raises(ServingError, match=r"^top-k must be within 1\.\.10, got 11$"):
        _postprocess(CLASSIFICATION, classifier(ServingBackend.python_onnxruntime), num_classes=10, top_k=11)


def test_fp16_io_graphs_are_refused():
    # Their config would declare FP32 tensors the graph does not take; fp16 graphs with fp32 I/O are served.
    with pytest.raises(ServingError, match=r"m\.onnx takes and returns fp16 tensors.*--io-type fp32"):
        classifier(ServingBackend.python_onnxruntime, artifact(precision="fp16", io_type="fp16"))
    served = classifier(ServingBackend.python_onnxruntime, artifact(precision="fp16", io_type="fp32"))
    assert served.input[0].data_type == cfg.pb.TYPE_FP32


def test_serving_stays_light():
    """serving reads artifacts from disk: it never imports the export package or torch, and neither does the
    preprocessing that runs inside Triton's Python stub."""
    import subprocess

    heavy = ("export", "torch", "onnxruntime", "tritonclient", "tritonclient.grpc", "tritonclient.http", "grpc")
    probe = (
        "import sys, serving.config, serving.repository, serving.server, serving.client, vitexport.preprocess; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    # tritonclient (the `serve` extra, ~0.2 s to import) is loaded only when a config is built or parsed.
    assert out.strip() == "[]"


def test_without_the_serve_extra_configs_fail_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # makes `from tritonclient.grpc import ...` fail
    cfg.model_config_pb2.cache_clear()
    try:
        with pytest.raises(ServingError, match=r"pip install 'vitexport\[serve\]'"):
            classifier(ServingBackend.python_onnxruntime)
        with pytest.raises(ServingError, match=r"pip install 'vitexport\[serve\]'"):
            cfg.parse('name: "x"')
    finally:
        cfg.model_config_pb2.cache_clear()
