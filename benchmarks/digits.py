"""A real labelled image set that ships with a package: scikit-learn's 8x8 handwritten digits, upsampled and
written as an ImageFolder, so that the accuracy gate can be exercised where ImageNet cannot be downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitexport.errors import VitExportError


def load_digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 RGB images and (N,) labels 0-9, in scikit-learn's order (1797 images)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise VitExportError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    from PIL import Image

    digits = load_digits()
    # 0..16 ink levels -> white ink on black, bilinear upsampling so strokes stay smooth at any size.
    gray = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack(
        [np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")) for g in gray]
    )
    return images, digits.target.astype(np.int64)


def split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of a fixed shuffled split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(n * (1 - test_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def write_image_folder(folder: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write `folder/<label>/<index>.png`, torchvision's ImageFolder layout."""
    from PIL import Image

    folder = Path(folder)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i:05d}.png")
    return folder


def train(checkpoint: Path, *, model: str = "test_vit_digits", epochs: int = 20) -> float:
    """Train a registered 10-class model on the digits' train split (AdamW, one-cycle schedule, seed 0), save its
    state dict to `checkpoint` and return its top-1 accuracy (percent) on the test split in PyTorch."""
    import torch
    from PIL import Image

    from vitexport.models import get_spec
    from vitexport.preprocess import preprocess_image

    spec = get_spec(model)
    images, labels = load_digits_images(spec.img_size)
    x = torch.from_numpy(np.stack([preprocess_image(Image.fromarray(i), spec.preprocess) for i in images]))
    y = torch.from_numpy(labels)
    # One thread: the machine's two cores are shared, and oversubscribed OpenMP threads slow training several-fold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, epochs, x, y, checkpoint)
    finally:
        torch.set_num_threads(threads)


def _train(name: str, epochs: int, x, y, checkpoint: Path) -> float:
    import torch

    from vitexport.models import create_model

    train_idx, test_idx = split(len(y))
    torch.manual_seed(0)
    model = create_model(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = epochs * ((len(train_idx) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
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
