"""Shared by the optimize tests: scikit-learn's digits as ImageFolders and a tiny ViT trained on them (~95% test
accuracy), so that the accuracy gate's top-1 means something. The checkpoint is kept in pytest's cache folder:
training takes ~20 s on two cores, reruns take none."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.digits import load_digits_images, split, write_image_folder
from export.onnx import export_onnx
from vitexport.artifacts import ModelArtifact
from vitexport.preprocess import preprocess_image
from vitexport.registry import create_model, get_spec

MODEL = "test_vit_digits"
EPOCHS = 20
TRAIN_SETTINGS = f"{MODEL}-epochs{EPOCHS}-adamw3e-3-bs64-v1"


def train(checkpoint: Path) -> float:
    """Train on the digits' train split; save a state dict; return the test accuracy in PyTorch."""
    spec = get_spec(MODEL)
    images, labels = load_digits_images(spec.img_size)
    x = torch.from_numpy(np.stack([preprocess_image(Image.fromarray(i), spec.preprocess) for i in images]))
    y = torch.from_numpy(labels)
    # One thread: the machine's two cores are shared, and oversubscribed OpenMP threads slow training several-fold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(x, y, checkpoint)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> float:
    train_idx, test_idx = split(len(y))
    torch.manual_seed(0)
    model = create_model(MODEL).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = EPOCHS * ((len(train_idx) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        acc = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    torch.save(model.state_dict(), checkpoint)
    return acc * 100


@dataclass(frozen=True)
class Digits:
    checkpoint: Path  # the trained tiny ViT's state dict
    train: Path  # ImageFolder of the train split (calibration images)
    test: Path  # ImageFolder of the held-out split (the accuracy check)
    onnx: ModelArtifact  # the checkpoint exported to fp32 ONNX


_prepared: dict[str, Digits] = {}


def prepare(cache, tmp_path_factory) -> Digits:
    """Train (or take from pytest's cache), write the image folders and export, once per session; test modules wrap
    this in their own fixture so that they need no import of a fixture."""
    if "digits" in _prepared:
        return _prepared["digits"]
    key = hashlib.sha256(f"{TRAIN_SETTINGS}-torch{torch.__version__}".encode()).hexdigest()[:12]
    folder = Path(cache.mkdir(f"vitexport-digits-{key}"))
    checkpoint = folder / "model.pt"
    if not checkpoint.is_file():
        tmp = folder / "model.pt.tmp"
        accuracy = train(tmp)
        assert accuracy > 90, f"the digits model trained to only {accuracy:.1f}%"
        tmp.rename(checkpoint)
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_digits_images(get_spec(MODEL).img_size)
    train_idx, test_idx = split(len(labels))
    digits = Digits(
        checkpoint=checkpoint,
        train=write_image_folder(root / "train", images[train_idx], labels[train_idx]),
        test=write_image_folder(root / "test", images[test_idx], labels[test_idx]),
        onnx=export_onnx(MODEL, root / "digits.onnx", checkpoint=checkpoint),
    )
    _prepared["digits"] = digits
    return digits
