"""Importing timm (and transformers) with a CPU-only torch: used by the tests' reference models and by the
benchmark's timm + PyTorch peer. timm is a test-time and benchmark reference, never a runtime dependency."""

from __future__ import annotations

import importlib
from types import ModuleType

# Defined with the torchvision preprocessing backend, the one runtime user of torchvision (a lower layer).
from vitexport.preprocess.tv_backend import declare_torchvision_ops

__all__ = ["declare_torchvision_ops", "import_timm"]


def import_timm() -> ModuleType:
    declare_torchvision_ops()
    return importlib.import_module("timm")
