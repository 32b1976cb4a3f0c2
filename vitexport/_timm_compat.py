"""Importing timm (and transformers) with a CPU-only torch: used by the tests' reference models and by the
benchmark's timm + PyTorch peer. timm is a test-time and benchmark reference, never a runtime dependency."""

from __future__ import annotations

import importlib
from types import ModuleType

_libraries: list = []  # keeps the declared op library (and its definitions) alive for the process


def declare_torchvision_ops() -> None:
    """Let torchvision's Python code import with a CPU-only torch.

    The only torchvision wheel that pairs with torch 2.13 on PyPI is a CUDA build whose C++ extension cannot load
    here; its Python side then fails registering fake kernels for `torchvision::nms`/`qnms`, ops the extension
    would have defined. Declaring those two schemas (never called by any classification model) lets timm and
    transformers import the real torchvision modules they use for layers, none of which touch the extension.
    """
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _libraries.append(lib)


def import_timm() -> ModuleType:
    declare_torchvision_ops()
    return importlib.import_module("timm")
