"""Shared by the optimize/gate tests: scikit-learn's digits as ImageFolders and a tiny ViT trained on them, cached
across runs in pytest's cache folder (training takes ~20 s on two cores; the cache makes reruns instant)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.digits import load_digits_images, split, write_image_folder
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


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(train, test) ImageFolders of the digits at the model's input size."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_digits_images(get_spec(MODEL).img_size)
    train_idx, test_idx = split(len(labels))
    return (
        write_image_folder(root / "train", images[train_idx], labels[train_idx]),
        write_image_folder(root / "test", images[test_idx], labels[test_idx]),
    )


@pytest.fixture(scope="session")
def digits_checkpoint(request) -> Path:
    """The trained tiny ViT's checkpoint, trained once and kept in pytest's cache."""
    key = hashlib.sha256(f"{TRAIN_SETTINGS}-torch{torch.__version__}".encode()).hexdigest()[:12]
    folder = Path(request.config.cache.mkdir(f"vitexport-digits-{key}"))
    checkpoint = folder / "model.pt"
    if not checkpoint.is_file():
        tmp = folder / "model.pt.tmp"
        accuracy = train(tmp)
        assert accuracy > 90, f"the digits model trained to only {accuracy:.1f}%"
        tmp.rename(checkpoint)
    return checkpoint
