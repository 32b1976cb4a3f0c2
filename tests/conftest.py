"""Shared fixtures: the independent reference implementations (timm, Hugging Face transformers), the digits model,
the tiny registered models exported once per session, and the `integration` marker.

Fast lane: `pytest -m "not integration"` leaves out every test that starts a real Triton or a subprocess-heavy
pipeline. Which tests those are is decided here (`pytest_collection_modifyitems`), not remembered file by file."""

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


def calibrated(model, name: str):
    """Batch-norm statistics measured on the photographs. With the initial ones (mean 0, variance 1) a random
    MobileViT shrinks its input stage after stage: its logits come out the same for every image (to 1e-7), and a
    server that mixed up the images would still match. Measured statistics keep each image's signal to the head.
    Models without batch norm are returned as they are."""
    import numpy as np
    from _photos import photos

    from vitexport.models import get_spec
    from vitexport.preprocess import preprocess_image

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
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
    tables, unit layer scales and zero heads would hide indexing bugs and tie logits), batch norms calibrated on
    real photographs, saved and exported to ONNX; made once per session (per xdist worker) and seeded by its name, so
    every test module that asks gets the same model whichever asked first."""
    from _parity import perturbed

    from vitexport.export.onnx import export_onnx
    from vitexport.models import create_model

    made: dict[str, Tiny] = {}

    def get(name: str) -> Tiny:
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            state = torch.random.get_rng_state()
            torch.manual_seed(zlib.crc32(name.encode()))
            try:
                model = calibrated(perturbed(create_model(name)), name)
            finally:
                torch.random.set_rng_state(state)
            checkpoint = folder / f"{name}.pth"
            torch.save(model.state_dict(), checkpoint)
            made[name] = Tiny(model, checkpoint, export_onnx(name, folder / f"{name}.onnx", checkpoint=checkpoint))
        return made[name]

    return get


# A test is an integration test when it starts a real Triton, through a fixture that serves one or in its body; tests
# that run `vitexport serve` or the soak script as a subprocess carry the mark themselves. They take 10-60 s each here,
# and are what `pytest -m "not integration"` (the fast lane) leaves out.
TRITON_FIXTURES = frozenset({"server", "quick_run"})  # quick_run: `bench --quick` with a triton-grpc backend


def _starts_triton(function) -> bool:
    try:
        return "with TritonServer(" in inspect.getsource(function)
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if TRITON_FIXTURES & uses or _starts_triton(getattr(item, "function", None)):
            item.add_marker(pytest.mark.integration)
