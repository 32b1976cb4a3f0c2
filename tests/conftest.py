"""Shared fixtures: the independent reference implementations (timm, Hugging Face transformers) and exports of
the tiny registered models."""

from __future__ import annotations

import importlib

import pytest
import torch


def _declare_torchvision_ops() -> None:
    """Let torchvision's Python code import with a CPU-only torch.

    The only torchvision wheel that pairs with torch 2.13 on PyPI is a CUDA build whose C++ extension cannot load
    here; its Python side then fails registering fake kernels for `torchvision::nms`/`qnms`, ops the extension
    would have defined. Declaring those two schemas (never called by any classification model) lets timm and
    transformers import the real torchvision modules they use for layers, none of which touch the extension.
    """
    if hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_torchvision_ops.lib = lib  # keep the library (and its definitions) alive


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
