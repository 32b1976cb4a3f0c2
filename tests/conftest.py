"""Shared fixtures: the independent reference implementations (timm, Hugging Face transformers) and exports of
the tiny registered models."""

from __future__ import annotations

import importlib

import pytest
import torch

from vitexport._timm_compat import declare_torchvision_ops as _declare_torchvision_ops


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
