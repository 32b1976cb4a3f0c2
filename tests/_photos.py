"""Real photographs for the serving tests: the two JPEGs scikit-learn ships (a temple in China, a flower; the dev
extra installs scikit-learn), plus a mirrored crop of the first, so a batch holds three different real images.
Random pixels would do for a parity test, but photographs are what a served model is for."""

from __future__ import annotations

import io
from pathlib import Path


def photo_paths() -> list[Path]:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [folder / "china.jpg", folder / "flower.jpg"]


def photos() -> list[bytes]:
    """Encoded images: both photographs as shipped (JPEG), and a mirrored, off-centre crop of the first as PNG."""
    from PIL import Image, ImageOps

    files = [p.read_bytes() for p in photo_paths()]
    with Image.open(io.BytesIO(files[0])) as image:
        crop = ImageOps.mirror(image.convert("RGB").crop((200, 40, 520, 400)))
    buf = io.BytesIO()
    crop.save(buf, "PNG")
    return [*files, buf.getvalue()]
