"""Real photographs for INT8 calibration and the accuracy gate of ImageNet models, where ImageNet cannot be
downloaded: the colour and grey photographs that scikit-image ships inside its wheel, cut into square crops at
several scales and positions, some mirrored, and written as a flat image folder.

Only photographs packaged in the wheel are used, read offline: scikit-image fetches its other samples with pooch
from the network, and a calibration set must not depend on a download. Synthetic images (logo, colour wheel,
text, chessboards) and microscopy (cells, retina, immunohistochemistry) are left out: they are far from what an
ImageNet classifier sees. The calibration and gate photos are disjoint, so that a variant is never graded on crops
of the photos that set its quantization ranges. Importable without torch; scikit-image and Pillow are imported when
used.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitexport.errors import VitExportError

# Name -> scikit-image's loader (in skimage.data) and which of its return values is the photograph.
PHOTOS: dict[str, tuple[str, int | None]] = {
    "astronaut": ("astronaut", None),  # colour, 512x512: a person, the US flag, a space shuttle model
    "coffee": ("coffee", None),  # colour, 600x400: a cup of coffee on a saucer
    "rocket": ("rocket", None),  # colour, 640x427: a rocket on its launch pad
    "camera": ("camera", None),  # grey, 512x512: a cameraman with a tripod, outdoors
    "chelsea": ("chelsea", None),  # colour, 451x300: a tabby cat
    "motorcycle": ("stereo_motorcycle", 0),  # colour, 741x500: a motorcycle (the left view of the stereo pair)
    "coins": ("coins", None),  # grey, 384x303: coins on a table
}
CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket", "camera")
GATE_PHOTOS = ("chelsea", "motorcycle", "coins")
SIZE = 256  # side of every crop written: any registered input size (64 to 384 px) is a resize away
MIN_SCALE = 0.3  # the smallest crop's side, as a fraction of the photo's short side
VERSION = 1  # of the crop recipe: part of the cache folder's name


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one of PHOTOS (grey photographs repeated over three channels)."""
    if name not in PHOTOS:
        raise VitExportError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    try:
        import skimage.data
    except ImportError:
        raise VitExportError("the calibration photographs need scikit-image: pip install scikit-image") from None
    loader, index = PHOTOS[name]
    image = getattr(skimage.data, loader)()
    image = np.asarray(image if index is None else image[index])
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def crops(count: int, *, photos: Sequence[str], size: int = SIZE, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """`count` (name, (size, size, 3) uint8) square crops, the photos taken in turn. Each photo's first crop is its
    largest centred square; the others take a side drawn between MIN_SCALE and 1 of the short side, a random
    position, and a mirror image half of the time. Deterministic for a seed."""
    from PIL import Image

    if count < 1 or size < 8:
        raise VitExportError(f"photo crops need count >= 1 and size >= 8, got {count} and {size}")
    if not photos:
        raise VitExportError("give at least one photo")
    sources = {name: Image.fromarray(load_photo(name)) for name in dict.fromkeys(photos)}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name = photos[i % len(photos)]
        image = sources[name]
        w, h = image.size
        short = min(w, h)
        if i < len(photos):
            side, x, y, flip = short, (w - short) // 2, (h - short) // 2, False
        else:
            side = round(float(short * rng.uniform(MIN_SCALE, 1.0)))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            flip = bool(rng.random() < 0.5)
        crop = image.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append((name, np.asarray(crop)))
    return out


def write_photo_folder(
    folder: str | Path, count: int, *, photos: Sequence[str] = CALIBRATION_PHOTOS, size: int = SIZE, seed: int = 0
) -> Path:
    """Write `count` crops as `folder/<index>_<photo>.png`: numbered first, so that the folder's sorted order (which
    the gate's hold-out and `limit` spread over) alternates between the photos."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, crop) in enumerate(crops(count, photos=photos, size=size, seed=seed)):
        Image.fromarray(crop).save(folder / f"{i:04d}_{name}.png")
    return folder


def default_cache() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vitexport" / "photos"


def deploy_photos() -> tuple[Path, Path]:
    """The folders `deploy` uses when given none: calibration crops of some photographs, gate crops of others."""
    return photo_folder(), photo_folder(40, photos=GATE_PHOTOS)


@functools.cache
def photo_folder(
    count: int = 100,
    *,
    photos: tuple[str, ...] = CALIBRATION_PHOTOS,
    size: int = SIZE,
    seed: int = 0,
    cache: Path | None = None,
) -> Path:
    """A folder of `count` crops of `photos`, written once into the cache folder (~/.cache/vitexport/photos) and
    reused: its name holds every setting. `photo_folder()` is calibration images; `photo_folder(40,
    photos=GATE_PHOTOS)` gate images of other photographs."""
    root = cache or default_cache()
    folder = root / f"{'-'.join(photos)}_n{count}_s{size}_seed{seed}_v{VERSION}"
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    # Written beside its final place and renamed: a folder of that name is always complete, even when two
    # processes (pytest workers, bench workers) build it at once.
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        write_photo_folder(tmp, count, photos=photos, size=size, seed=seed)
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def detection_photos(photos: Sequence[str] = GATE_PHOTOS) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) images of several shapes for a detector, whose canvas they are padded onto: each photo
    whole (landscape, padded below), a portrait strip of its middle (padded on the right) and its centred square (no
    padding)."""
    out = []
    for name in photos:
        image = load_photo(name)
        h, w = image.shape[:2]
        short = min(h, w)
        strip = short * 3 // 5
        top, left = (h - short) // 2, (w - short) // 2
        out += [
            (name, image),
            (f"{name}-portrait", image[top : top + short, (w - strip) // 2 : (w - strip) // 2 + strip]),
            (f"{name}-square", image[top : top + short, left : left + short]),
        ]
    return out


# The photograph sizes the image path is measured and gated on (issue 24): a 0.3 MP web image, a 2 MP one and a
# 12 MP phone photo, as (width, height).
PHOTO_SIZES: dict[str, tuple[int, int]] = {"0.3MP": (640, 480), "2MP": (1600, 1200), "12MP": (4032, 3024)}
PHOTO_FORMATS = ("JPEG", "PNG")
JPEG_QUALITY = 90  # a camera's usual quality


@functools.cache
def sized_photos(photos: tuple[str, ...] = GATE_PHOTOS[:2]) -> tuple[tuple[str, bytes], ...]:
    """(name, encoded bytes) of each of `photos` resized up (Lanczos) to every PHOTO_SIZES size, as a JPEG (quality
    90) and a PNG: the files the fast preprocessing is gated on. Upscaled photographs are smoother than a camera's,
    so the JPEGs are encoded with 4:2:0 chroma as cameras do. Made once per process (a 12 MP PNG takes a second)."""
    import io

    from PIL import Image

    out = []
    for photo in photos:
        source = Image.fromarray(load_photo(photo))
        for size_name, size in PHOTO_SIZES.items():
            image = source.resize(size, Image.Resampling.LANCZOS)
            for fmt in PHOTO_FORMATS:
                buffer = io.BytesIO()
                options = {"quality": JPEG_QUALITY, "subsampling": "4:2:0"} if fmt == "JPEG" else {"compress_level": 1}
                image.save(buffer, format=fmt, **options)
                out.append((f"{photo}-{size_name}.{fmt.lower()}", buffer.getvalue()))
    return tuple(out)
