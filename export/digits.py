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
