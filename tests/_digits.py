"""What the `digits` fixture (tests/conftest.py) makes for the optimize, OpenVINO, quantize, import and deploy tests:
scikit-learn's digits as ImageFolders and a tiny ViT trained on them (~95% test accuracy), so that the accuracy gate's
top-1 means something. The checkpoint is kept in pytest's cache folder: training takes ~20 s on two cores, reruns
take none."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from vitexport.artifacts import ModelArtifact
from vitexport.bench.digits import load_digits_images, split, train, write_image_folder
from vitexport.export.onnx import export_onnx
from vitexport.models import get_spec

MODEL = "test_vit_digits"
EPOCHS = 20
TRAIN_SETTINGS = f"{MODEL}-epochs{EPOCHS}-adamw3e-3-bs64-v1"


@dataclass(frozen=True)
class Digits:
    checkpoint: Path  # the trained tiny ViT's state dict
    train: Path  # ImageFolder of the train split (calibration images)
    test: Path  # ImageFolder of the held-out split (the accuracy check)
    onnx: ModelArtifact  # the checkpoint exported to fp32 ONNX


def prepare(cache, tmp_path_factory) -> Digits:
    """Train (or take from pytest's cache), write the image folders and export; the session fixture `digits` calls
    this once per session."""
    key = hashlib.sha256(f"{TRAIN_SETTINGS}-torch{torch.__version__}".encode()).hexdigest()[:12]
    folder = Path(cache.mkdir(f"vitexport-digits-{key}"))
    checkpoint = folder / "model.pt"
    if not checkpoint.is_file():
        tmp = folder / "model.pt.tmp"
        accuracy = train(tmp, model=MODEL, epochs=EPOCHS)
        assert accuracy > 90, f"the digits model trained to only {accuracy:.1f}%"
        tmp.rename(checkpoint)
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_digits_images(get_spec(MODEL).img_size)
    train_idx, test_idx = split(len(labels))
    return Digits(
        checkpoint=checkpoint,
        train=write_image_folder(root / "train", images[train_idx], labels[train_idx]),
        test=write_image_folder(root / "test", images[test_idx], labels[test_idx]),
        onnx=export_onnx(MODEL, root / "digits.onnx", checkpoint=checkpoint),
    )
