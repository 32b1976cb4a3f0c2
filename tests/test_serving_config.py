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
    return cfg.classifier_config("vit", a or artifact(), backend=backend, model_filename="model.onnx", **kw)


def _ensemble():
    c = classifier(ServingBackend.python_onnxruntime)
    pre = cfg.preprocess_config("vit_preprocess", get_spec("test_vit").preprocess, max_batch_size=8)
    post = cfg.postprocess_config("vit_postprocess", num_classes=1000, top_k=5, max_batch_size=8)
    return cfg.ensemble_config("vit_image", classifier=c, preprocess=pre, postprocess=post)


EMBEDDINGS = artifact(output_names=("embeddings",), num_classes=64)  # `--head features`: (N, D) embeddings, D = 64


def _embeddings_ensemble():
    c = classifier(ServingBackend.python_onnxruntime, EMBEDDINGS)
    pre = cfg.preprocess_config("vit_preprocess", get_spec("test_vit").preprocess, max_batch_size=8)
    return cfg.ensemble_config("vit_image", classifier=c, preprocess=pre, postprocess=None)


CASES = {
    "python_onnxruntime": lambda: classifier(ServingBackend.python_onnxruntime, instances=2, intra_op_threads=2),
    "python_openvino": lambda: classifier(ServingBackend.python_openvino),
    "onnxruntime_trt_fp16": lambda: classifier(ServingBackend.onnxruntime, tensorrt_accelerator=True),
    "openvino": lambda: cfg.classifier_config(
        "vit", artifact("openvino"), backend=ServingBackend.openvino, batching=Batching(), model_filename="model.xml"
    ),
    "tensorrt": lambda: cfg.classifier_config(
        "vit",
        ENGINE,
        backend=ServingBackend.tensorrt,
        batching=cfg.tensorrt_batching(ENGINE.details["profile"]),
        model_filename="model.plan",
    ),
    "tensorrt_multi_cc": lambda: cfg.classifier_config(
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
    "preprocess": lambda: cfg.preprocess_config("vit_preprocess", get_spec("test_resnet").preprocess, max_batch_size=8),
    "postprocess": lambda: cfg.postprocess_config("vit_postprocess", num_classes=1000, top_k=5, max_batch_size=8),
    "ensemble": _ensemble,
    "embeddings": lambda: classifier(ServingBackend.python_onnxruntime, EMBEDDINGS),
    "embeddings_ensemble": _embeddings_ensemble,
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


def test_embeddings_have_no_labels_and_their_ensemble_no_top_k():
    model = cfg.parse((REFERENCES / "embeddings.pbtxt").read_text())
    (output,) = model.output
    assert (output.name, list(output.dims), output.label_filename) == ("embeddings", [64], "")
    ensemble = cfg.parse((REFERENCES / "embeddings_ensemble.pbtxt").read_text())
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["vit_preprocess", "vit"]
    (output,) = ensemble.output
    assert (output.name, output.data_type, list(output.dims)) == ("embeddings", cfg.pb.TYPE_FP32, [64])
    assert dict(ensemble.ensemble_scheduling.step[1].output_map) == {"embeddings": "embeddings"}
    assert cfg.returns_embeddings(["embeddings"]) and not cfg.returns_embeddings(["logits"])
    assert not cfg.returns_embeddings(["logits", "logits_cls", "logits_dist"])


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
    with pytest.raises(ServingError, match="top-k"):
        cfg.postprocess_config("p", num_classes=10, top_k=11, max_batch_size=8)


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
