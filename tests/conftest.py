"""Shared fixtures: the independent reference implementations (timm, Hugging Face transformers), the digits model,
the tiny registered models exported once per session, one real Triton per session for the serving tests that can
share it, and the `integration` marker.

Fast lane: `pytest -m "not integration"` leaves out every test that starts a real Triton or a subprocess-heavy
pipeline: those using a Triton fixture or starting one in their body are marked here
(`pytest_collection_modifyitems`), the few others (a `vitexport serve` subprocess, the soak script, whole optimize
pipelines) carry the mark themselves."""

from __future__ import annotations

import importlib
import inspect
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from vitexport._timm_compat import declare_torchvision_ops as _declare_torchvision_ops

if TYPE_CHECKING:
    from torch import nn

    from vitexport.artifacts import ModelArtifact


@pytest.fixture(scope="session")
def timm():
    _declare_torchvision_ops()
    return importlib.import_module("timm")


@pytest.fixture(scope="session")
def transformers():
    _declare_torchvision_ops()
    return importlib.import_module("transformers")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits(request, tmp_path_factory):
    """scikit-learn's digits as ImageFolders and the tiny ViT trained on them (tests/_digits.py), once per session
    (per xdist worker); the trained checkpoint is kept in pytest's cache across sessions."""
    import _digits

    return _digits.prepare(request.config.cache, tmp_path_factory)


@dataclass(frozen=True)
class Tiny:
    model: nn.Module  # eval mode, the weights below
    checkpoint: Path  # its state dict
    onnx: ModelArtifact  # fp32 ONNX with a dynamic batch, validated by export_onnx against PyTorch at batch 1 and 4


def batch_norms(model) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def calibrate(model, name: str):
    """Batch-norm statistics measured on the photographs. With the initial ones (mean 0, variance 1) a random
    MobileViT shrinks its input stage after stage: its logits come out the same for every image (to 1e-7), and a
    server that mixed up the images would still match. Measured statistics keep each image's signal to the head.
    Models without batch norm are returned as they are."""
    import numpy as np
    from _photos import photos

    from vitexport.models import get_spec
    from vitexport.preprocess import preprocess_image

    norms = batch_norms(model)
    if norms:
        pixels = torch.from_numpy(np.stack([preprocess_image(b, get_spec(name).preprocess) for b in photos()]))
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over what it sees
            norm.train()
        with torch.no_grad():
            model(pixels)
        model.eval()
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """`tiny(name)`: a tiny registered classifier with every float parameter and buffer perturbed (zero-initialised
    tables, unit layer scales and zero heads would hide indexing bugs and tie logits), saved and exported to ONNX;
    `tiny(name, calibrated=True)`: the same weights with batch norms calibrated on real photographs (for served
    answers that tell images apart; the few photographs' statistics make a network too sharp for FP16/INT8 gates).
    Made once per session (per xdist worker) and seeded by the name, so every test module that asks gets the same
    model whichever asked first."""
    from _parity import perturbed

    from vitexport.export.onnx import export_onnx
    from vitexport.models import create_model

    made: dict[tuple[str, bool], Tiny] = {}

    def get(name: str, *, calibrated: bool = False) -> Tiny:
        if (name, calibrated) in made:
            return made[name, calibrated]
        state = torch.random.get_rng_state()
        torch.manual_seed(zlib.crc32(name.encode()))
        try:
            model = perturbed(create_model(name))
        finally:
            torch.random.set_rng_state(state)
        if calibrated:
            if not batch_norms(model):  # nothing to calibrate: the same model
                made[name, calibrated] = get(name)
                return made[name, calibrated]
            model = calibrate(model, name)
        folder = tmp_path_factory.mktemp(name)
        checkpoint = folder / f"{name}.pth"
        torch.save(model.state_dict(), checkpoint)
        made[name, calibrated] = Tiny(
            model, checkpoint, export_onnx(name, folder / f"{name}.onnx", checkpoint=checkpoint)
        )
        return made[name, calibrated]

    return get


@pytest.fixture(scope="session")
def tiny_detr(tmp_path_factory):
    """test_detr with random weights shaken up so its queries disagree (distinct scores, boxes and classes), exported
    to ONNX: the detector the serving tests serve."""
    from vitexport.export.onnx import export_onnx
    from vitexport.models import create_model

    root = tmp_path_factory.mktemp("detr_export")
    state = torch.random.get_rng_state()
    torch.manual_seed(13)
    try:
        model = create_model("test_detr")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    finally:
        torch.random.set_rng_state(state)
    checkpoint = root / "test_detr.pth"
    torch.save(model.state_dict(), checkpoint)
    return export_onnx("test_detr", root / "detr.onnx", checkpoint=checkpoint)


# The test files served by the one shared Triton below. Their tests only ask: none kills a stub, changes the
# repository or needs a server of its own config (those start their own: test_serving_embeddings needs a repository
# with one ensemble, test_serving_cli runs `vitexport serve`, model control tests start a second server).
SHARED_TRITON_FILES = ("test_serving_server.py", "test_serving_families.py", "test_serving_detection.py")
SERVED_FAMILIES = ("test_beit", "test_mae", "test_swin", "test_mobilevit")  # test_serving_families
FAMILY_TOP_K = 5


@pytest.fixture(scope="session")
def server(tiny, tiny_detr, tmp_path_factory):
    """One real Triton per session (per xdist worker; the scheduler below keeps the files that use it on one worker)
    for SHARED_TRITON_FILES, serving what each of them asks of it."""
    import json

    from typer.testing import CliRunner

    from vitexport.cli import app
    from vitexport.export.onnx import export_onnx
    from vitexport.serving.config import Batching, ServingBackend
    from vitexport.serving.repository import add_model
    from vitexport.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("triton_repo")
    # test_serving_server: a ViT, a distilled DeiT and a ResNet, on ONNX Runtime in the Python backend, OpenVINO,
    # and Triton's own ONNX Runtime backend (absent from this build: noted, not loaded); a fixed-batch ResNet.
    vit, deit, resnet = tiny("test_vit"), tiny("test_deit_distilled"), tiny("test_resnet")
    add_model(repo, vit.onnx, batching=Batching(8, (4, 8), 1000))
    add_model(repo, deit.onnx, ensemble=False)
    # A long queue delay makes the dynamic batching test deterministic: concurrent requests wait for each other.
    add_model(repo, resnet.onnx, batching=Batching(8, (), 50_000))
    add_model(repo, vit.onnx, name="test_vit_ov", backend=ServingBackend.python_openvino, ensemble=False)
    add_model(repo, vit.onnx, name="test_vit_ort", backend=ServingBackend.onnxruntime, ensemble=False)
    fixed = export_onnx(
        "test_resnet", tmp_path_factory.mktemp("fixed") / "fixed.onnx", checkpoint=resnet.checkpoint, batch_size=1
    )
    add_model(repo, fixed, name="test_resnet_fixed", ensemble=False)
    # test_serving_families: each family with its image ensemble.
    for name in SERVED_FAMILIES:
        add_model(repo, tiny(name, calibrated=True).onnx, top_k=FAMILY_TOP_K)
    # test_serving_detection: `vitexport repo` of the detector on ONNX Runtime and on OpenVINO. A long queue delay at
    # the detector makes concurrent requests meet there: batches of several requests.
    runner = CliRunner()
    # Exact preprocessing: test_serving_detection compares served answers with it in process (the fast path is
    # test_serving_preprocess_fast's).
    args = ["repo", str(tiny_detr.path), "--repo", str(repo), "--name", "detr", "--queue-delay-us", "100000", "--json"]
    args += ["--preprocess", "exact"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"] == ["detr", "detr_preprocess", "detr_postprocess", "detr_image"]
    args = ["repo", str(tiny_detr.path), "--repo", str(repo), "--name", "detr_ov", "--backend", "python-openvino"]
    args += ["--preprocess", "exact"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # Some 30 models, each Python one a stub process to start: longer than one file's server on two busy cores.
    with TritonServer(repo, startup_timeout=300) as s:
        yield s


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist (-p no:xdist) there is nothing to schedule
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with SHARED_TRITON_FILES as one unit, so that one worker starts the shared server once
    instead of each worker starting it for the file it got."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedTritonScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "shared-triton" if Path(scope).name in SHARED_TRITON_FILES else scope

    return SharedTritonScheduling(config, log)


# A test is an integration test when it starts a real Triton, through a fixture that serves one or in its body, or
# runs a whole pipeline (the bench harness, deploy, INT8 calibration and gates, a full-size export); those without such
# a fixture or body carry the mark themselves. They take 5-60 s each here, and are what `pytest -m "not integration"`
# (the fast lane) leaves out.
# quick_run: `bench --quick` with a triton-grpc backend; quick_families: `bench --quick` of two families over four
# runtimes, not a Triton but the whole harness (a minute here); variants: test_export_detection's six DETR variants,
# built, calibrated and gated (and the tests on a variant: the scrambled head, a budget too tight).
INTEGRATION_FIXTURES = frozenset({"server", "quick_run", "quick_families", "variants"})


# What, in a test's body or in a fixture it uses, starts a real Triton (directly, through the front door or the CLI's
# `serve`, the supervision tests' `Serve`) or a whole deploy.
STARTS_TRITON = ("TritonServer(", "vx.serve(", "pipeline.serve(", "Serve(", '"serve"', '"deploy"', "deploy_candidates(")


def _starts_triton(function) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(pattern in source for pattern in STARTS_TRITON)


def _fixtures_start_triton(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(_starts_triton(d.func) for defs in definitions for d in defs if "conftest" not in d.baseid)


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        starts = (
            INTEGRATION_FIXTURES & uses
            or _starts_triton(getattr(item, "function", None))
            or _fixtures_start_triton(item)
        )
        # Full-size models (`slow`) cost seconds each on two cores: the fast lane leaves them out too.
        if starts or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
