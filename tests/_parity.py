"""Shared by the model-family tests: parity against timm's and transformers' models, whose random initialisation
leaves zero tables, unit scales and zero heads that would hide indexing bugs, so every float parameter and buffer
(batch-norm statistics too) is moved off it first."""

from __future__ import annotations

import numpy as np
import torch

PARITY_ATOL = 1e-5  # fp32, ours against an independent implementation with the same weights
ONNX_ATOL = 1e-4  # fp32, ONNX Runtime against PyTorch


def perturbed(model, scale: float = 0.02):
    """`model` in eval mode with every floating-point parameter and buffer moved off its initial value, in place."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * scale)
    return model.eval()


def max_diff(ours, reference, img_size: int, batch: int = 2) -> float:
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.inference_mode():
        return (ours(x) - reference(x)).abs().max().item()


def assert_same(ours, reference, img_size: int = 64, batch: int = 2) -> None:
    """Same outputs within PARITY_ATOL, on a real signal (not zeros on both sides)."""
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.inference_mode():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape
    assert expected.abs().max().item() > 1e-2
    assert (got - expected).abs().max().item() <= PARITY_ATOL


def assert_onnx_matches_pytorch(session, model, img_size: int = 64, batches=(2, 5), classes: int = 1000) -> None:
    """ONNX Runtime `session` against PyTorch `model` at batch sizes the export's own validation did not use."""
    for batch in batches:
        x = torch.randn(batch, 3, img_size, img_size)
        with torch.inference_mode():
            expected = model(x).numpy()
        (got,) = session.run(["logits"], {"pixel_values": x.numpy()})
        assert got.shape == (batch, classes)
        assert np.abs(got - expected).max() <= ONNX_ATOL


def export_perturbed(name: str, folder):
    """`name` with perturbed weights, exported through export_onnx (which validates it against PyTorch at batch 1
    and 4): (the PyTorch model, the ONNX artifact)."""
    from vitexport.export.onnx import export_onnx
    from vitexport.models import create_model

    model = perturbed(create_model(name))
    torch.save(model.state_dict(), folder / f"{name}.pth")
    return model, export_onnx(name, folder / f"{name}.onnx", checkpoint=folder / f"{name}.pth")
