"""transformers' image processors as a PreprocessConfig: a `preprocessor_config.json` (as `save_pretrained` and
Optimum write it) mapped key by key onto the one preprocessing description, for the processors of the families this
project serves: ViT (and Swin, which uses it), DeiT, BEiT, MobileViT, ConvNeXt and DETR. Anything the description
cannot express exactly (a non-square output, padding a classifier, an unknown filter or key) is refused in one line
naming the key: an approximated preprocessing serves wrong answers that look right.

Each processor has two backends whose pixels differ by a few levels of 255 on some pixels: Pillow (transformers 4's
`...ImageProcessor`, 5's `...ImageProcessorPil`) and torchvision (4's `...ImageProcessorFast`, 5's default
`...ImageProcessor`; `resize_backend: torchvision`, vitexport.preprocess.tv_backend). The file does not always say
which: transformers 5 writes the same `image_processor_type` for both, and a few keys mean other pixels in 4 and 5.
So a file is read as transformers 4 (the version Optimum runs) loads it, unless the caller names the backend, as
transformers 5's `AutoImageProcessor.from_pretrained(path, backend=...)` does; what neither settles is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitexport.errors import ArtifactError
from vitexport.preprocess.config import (
    DEFAULT_RESCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    RESIZE_BACKENDS,
    TORCHVISION_FILTERS,
    PreprocessConfig,
)

STANDARD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN and _STD, most processors' defaults


@dataclass(frozen=True)
class _Processor:
    """What one processor class does where its preprocessor_config.json says nothing (its class defaults)."""

    resample: int | None  # None: the default differs between transformers 4 and 5, so the file must say
    mean: tuple[float, float, float] = STANDARD
    std: tuple[float, float, float] = STANDARD
    center_crop: bool | None = False  # do_center_crop's default (None: it differs between transformers 4 and 5)
    square_int: bool = True  # an int `size` is height = width (get_size_dict's default_to_square), else shortest edge
    keys: frozenset[str] = frozenset()  # the keys this class reads besides COMMON


PROCESSORS = {
    "ViTImageProcessor": _Processor(resample=2),
    "DeiTImageProcessor": _Processor(resample=3, center_crop=True),
    # transformers 4's Pillow BEiT crops by default, its Fast one and 5's do not; 4's MobileViT and ConvNeXt resample
    # bilinear by default, 5's bicubic. save_pretrained writes both keys; a file without them is refused.
    "BeitImageProcessor": _Processor(
        resample=3, center_crop=None, keys=frozenset({"do_reduce_labels", "reduce_labels"})
    ),
    "MobileViTImageProcessor": _Processor(
        resample=None,
        center_crop=True,
        square_int=False,
        keys=frozenset({"do_flip_channel_order", "do_reduce_labels", "reduce_labels"}),
    ),
    "ConvNextImageProcessor": _Processor(resample=None, square_int=False, keys=frozenset({"crop_pct"})),
    "DetrImageProcessor": _Processor(
        resample=2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        keys=frozenset(
            {"do_pad", "pad_size", "max_size", "format", "do_convert_annotations", "return_segmentation_masks"}
        ),
    ),
}
COMMON = {
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "default_to_square",
    "data_format",
    "do_pad",  # refused when true, for a classifier
}
# Keys that do not change an image's pixels: names, call-time settings, labels' and annotations' handling.
# do_convert_rgb: vitexport converts every image to RGB (Pillow's convert), as transformers does for RGB, grey and
# palette images.
IRRELEVANT = {
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "_processor_class",
    "_valid_processor_keys",  # written by some transformers 4 releases: the list of keyword arguments
    "do_convert_rgb",
    "input_data_format",
    "return_tensors",
    "device",
    "disable_grouping",
}
CONVNEXT_WARP = 384  # ConvNextImageProcessor: a shortest_edge this size or over is a warp to a square, no crop


def from_hf_processor(
    d: dict[str, Any], *, input_size: int | None = None, backend: str | None = None, writer_backend: str | None = None
) -> PreprocessConfig:
    """A preprocessor_config.json's dict -> the PreprocessConfig that gives the same pixels; `input_size`, the model's
    S when known, must be what the processor makes. Without `backend`, the pixels of the processor transformers 4
    (what Optimum runs) loads from the file: `...Fast` torchvision, else Pillow; with it ("pil" or "torchvision"), those
    of transformers 5's `AutoImageProcessor.from_pretrained(path, backend=backend)` (5 writes the same type for both,
    and loads torchvision by default). `writer_backend`: the backend the transformers that wrote the file loads a
    plain type with (5: torchvision), taken where `backend` is not given and the type does not name its own (`...Fast`
    and `...Pil` are loaded as such by 4 and 5 alike). ArtifactError, one line naming the key, for anything else."""
    kind = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
    name = kind.replace("FeatureExtractor", "ImageProcessor").removesuffix("Fast").removesuffix("Pil")
    processor = PROCESSORS.get(name)
    if processor is None:
        raise ArtifactError(
            f"image_processor_type {kind or None!r} is not one vitexport maps ({', '.join(PROCESSORS)})"
        )
    if backend is not None and backend not in RESIZE_BACKENDS:
        raise ArtifactError(f"backend: {backend!r} is not pil or torchvision")
    if backend is None and kind.endswith("Pil"):  # a transformers 5 class name: read as 5 reads it
        backend = "pil"
    elif backend is None and not kind.endswith("Fast"):
        backend = writer_backend
    given = {k: v for k, v in d.items() if v is not None}  # transformers reads null as the class default
    unknown = sorted(set(given) - COMMON - IRRELEVANT - processor.keys)
    if unknown:
        raise ArtifactError(f"{unknown[0]}: not a {name} key vitexport knows; refused rather than guessed at")
    if not given.get("do_resize", True):
        raise ArtifactError("do_resize: false: the model's input would take each photograph's own size")
    if given.get("data_format", "channels_first") != "channels_first":
        raise ArtifactError(f"data_format: {given['data_format']!r}: the model takes channels first")
    resize_backend = backend or ("torchvision" if kind.endswith("Fast") else "pil")
    pixels = _pixels(given, processor, name) | {"resize_backend": resize_backend}
    if resize_backend == "torchvision" and pixels["interpolation"] not in TORCHVISION_FILTERS:
        raise ArtifactError(
            f"resample: {INTERPOLATIONS.index(pixels['interpolation'])} ({pixels['interpolation']}): "
            "torchvision cannot resize with it"
        )
    if name == "DetrImageProcessor":
        return _detection(given, pixels, input_size)
    if given.get("do_pad"):
        raise ArtifactError("do_pad: true: padding a classifier's images to the batch's largest changes its pixels")
    if backend is None and resize_backend == "pil":
        _transformers_4_pillow(given, name)
    if name == "ConvNextImageProcessor":
        resize, crop = _convnext(given)
    else:
        resize, crop = _resize(given, processor), _crop(given, processor)
    # The crop's offsets: Pillow processors floor them; torchvision ones truncate (transformers' own centre crop),
    # but transformers 4's ConvNextImageProcessorFast calls torchvision's center_crop, which rounds them.
    rounding = "floor" if resize_backend == "pil" else "trunc"
    if name == "ConvNextImageProcessor" and resize_backend == "torchvision" and backend is None:
        rounding = "round"
    return _classifier(resize, crop, pixels | {"crop_rounding": rounding}, input_size)


def _transformers_4_pillow(given: dict[str, Any], name: str) -> None:
    """What transformers 4's Pillow ViT, DeiT and BEiT processors do otherwise than 5's: their resize takes
    {height, width} only (a shortest edge fails there), and ViT's ignores do_center_crop (5's crops)."""
    if name not in ("ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor"):
        return
    if isinstance(given.get("size"), dict) and "shortest_edge" in given["size"]:
        raise ArtifactError(
            f"size: {given['size']!r}: transformers 4's {name} takes {{height, width}} only "
            "(transformers 5's does: give the backend to read the file as 5 does)"
        )
    if name == "ViTImageProcessor" and given.get("do_center_crop"):
        raise ArtifactError(
            "do_center_crop: true: transformers 4's ViTImageProcessor ignores it, 5's crops "
            "(give the backend to read the file as 5 does)"
        )


def _pixels(given: dict[str, Any], processor: _Processor, name: str) -> dict[str, Any]:
    """The filter, rescale factor, mean/std and channel order, as PreprocessConfig's keyword arguments."""
    resample = given.get("resample", processor.resample)
    if resample is None:
        raise ArtifactError(f"resample: missing, and {name}'s default is bilinear in transformers 4, bicubic in 5")
    if not isinstance(resample, int) or isinstance(resample, bool) or not 0 <= resample < len(INTERPOLATIONS):
        raise ArtifactError(f"resample: {resample!r} is not one of Pillow's filters (0 to 5)")
    rescale = DEFAULT_RESCALE
    if given.get("do_rescale", True):
        rescale = given.get("rescale_factor", DEFAULT_RESCALE)
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not rescale > 0:
            raise ArtifactError(f"rescale_factor: {rescale!r} is not a number over 0")
    else:
        rescale = 1.0
    # MobileViT's processor never normalises (whatever do_normalize says) and flips RGB to BGR last.
    normalise = name != "MobileViTImageProcessor" and given.get("do_normalize", True)
    mean = _triple(given, "image_mean", processor.mean) if normalise else (0.0, 0.0, 0.0)
    std = _triple(given, "image_std", processor.std) if normalise else (1.0, 1.0, 1.0)
    if min(std) <= 0:
        raise ArtifactError(f"image_std: {list(std)} must be over 0")
    flip = name == "MobileViTImageProcessor" and given.get("do_flip_channel_order", True)
    return {
        "interpolation": INTERPOLATIONS[resample],
        "rescale": float(rescale),
        "mean": mean,
        "std": std,
        "channel_order": "BGR" if flip else "RGB",
    }


def _triple(given: dict[str, Any], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """image_mean / image_std: three numbers, or one for all three channels (as transformers broadcasts it)."""
    value = given.get(key, default)
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) for v in values):
        raise ArtifactError(f"{key}: {value!r} is not three numbers (one per RGB channel)")
    return float(values[0]), float(values[1]), float(values[2])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size(given: dict[str, Any], key: str, square_int: bool) -> dict[str, int]:
    """transformers' size forms as a dict (get_size_dict): an int is a square or a shortest edge, [h, w] fixed."""
    value = given[key]
    if _is_number(value) and int(value) == value:
        return {"height": int(value), "width": int(value)} if square_int else {"shortest_edge": int(value)}
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        sides = {k: v for k, v in value.items() if v is not None}
        if all(_is_number(v) and int(v) == v and v >= 1 for v in sides.values()):
            return {k: int(v) for k, v in sides.items()}
    raise ArtifactError(f"{key}: {value!r} is not a size transformers' processors take")


def _resize(given: dict[str, Any], processor: _Processor) -> int | tuple[int, int]:
    """A classifier's resize: {"height", "width"} -> exactly that size; {"shortest_edge"} -> the short side."""
    if "size" not in given:
        raise ArtifactError("size: missing, and a classifier's processor needs it (vitexport does not guess it)")
    size = _size(given, "size", given.get("default_to_square", processor.square_int))
    if set(size) == {"height", "width"}:
        return size["height"], size["width"]
    if set(size) == {"shortest_edge"}:
        return size["shortest_edge"]
    raise ArtifactError(f"size: {given['size']!r}: a classifier takes {{height, width}} or {{shortest_edge}}")


def _crop(given: dict[str, Any], processor: _Processor) -> int | None:
    """The centre crop's side, None for no crop; a non-square crop is refused (the served input is S x S)."""
    crop = given.get("do_center_crop", processor.center_crop)
    if crop is None:
        raise ArtifactError("do_center_crop: missing, and its default is to crop in transformers 4, not in 5")
    if not crop:
        return None
    if "crop_size" not in given:
        raise ArtifactError("crop_size: missing while do_center_crop is true (vitexport does not guess it)")
    crop = _size(given, "crop_size", True)
    if set(crop) != {"height", "width"} or crop["height"] != crop["width"]:
        raise ArtifactError(f"crop_size: {given['crop_size']!r}: the served model takes a square input")
    return crop["height"]


def _convnext(given: dict[str, Any]) -> tuple[int | tuple[int, int], int | None]:
    """ConvNextImageProcessor's rule: shortest_edge < 384 -> short side to int(shortest_edge / crop_pct), crop
    shortest_edge x shortest_edge; else a warp to shortest_edge x shortest_edge, no crop."""
    if given.get("do_center_crop"):
        raise ArtifactError("do_center_crop: true: ConvNextImageProcessor crops by crop_pct already; a second crop")
    size = _size(given, "size", False) if "size" in given else None
    if size is None or set(size) != {"shortest_edge"}:
        raise ArtifactError(f"size: {given.get('size')!r}: ConvNextImageProcessor takes {{shortest_edge}}")
    edge = size["shortest_edge"]
    if edge >= CONVNEXT_WARP:
        return (edge, edge), None
    crop_pct = given.get("crop_pct", 224 / 256)
    if not _is_number(crop_pct) or not 0 < crop_pct <= 1:
        raise ArtifactError(f"crop_pct: {crop_pct!r} must be in (0, 1]")
    return int(edge / crop_pct), edge


def _classifier(
    resize: int | tuple[int, int], crop: int | None, pixels: dict[str, Any], input_size: int | None
) -> PreprocessConfig:
    """The config from the resize and crop; the output must be square, and the model's size when that is known."""
    if crop is None:
        if not isinstance(resize, tuple):
            raise ArtifactError(
                f"size: shortest_edge {resize} with no centre crop keeps each photograph's aspect ratio; "
                "the served model takes a square input"
            )
        if resize[0] != resize[1]:
            raise ArtifactError(f"size: {resize[0]} x {resize[1]} with no centre crop: the served input is square")
    side = crop if crop is not None else resize[0] if isinstance(resize, tuple) else resize
    smallest = min(resize) if isinstance(resize, tuple) else resize  # under the crop: zeros around, as transformers
    if input_size is not None and side != input_size:
        raise ArtifactError(f"size: the processor makes {side} x {side} images; the model takes {input_size}")
    return PreprocessConfig(side, crop_pct=min(1.0, side / smallest), resize=resize, crop=crop is not None, **pixels)


def _detection(given: dict[str, Any], pixels: dict[str, Any], input_size: int | None) -> PreprocessConfig:
    """DETR's: the shorter side to shortest_edge, the longer at most longest_edge, padded; on vitexport's square
    canvas (input_size; by default shortest_edge), scaled down further where it would not fit."""
    if given.get("do_center_crop"):
        raise ArtifactError("do_center_crop: true: a detector's processor that crops cuts objects off")
    if not given.get("do_pad", True):
        raise ArtifactError("do_pad: false: the served detector pads every image onto its square canvas")
    if "size" not in given:
        raise ArtifactError("size: missing, and DetrImageProcessor needs it (vitexport does not guess it)")
    value = given["size"]
    if _is_number(value):  # transformers 4's early configs: size 800 with max_size 1333
        size = {"shortest_edge": int(value), "longest_edge": int(given.get("max_size", 1333))}
    else:
        size = _size(given, "size", False)
    if set(size) != {"shortest_edge", "longest_edge"}:
        raise ArtifactError(f"size: {value!r}: vitexport's detectors take {{shortest_edge, longest_edge}}")
    canvas = input_size if input_size is not None else size["shortest_edge"]
    if "pad_size" in given:
        pad = _size(given, "pad_size", True)
        if pad != {"height": canvas, "width": canvas}:
            raise ArtifactError(f"pad_size: {given['pad_size']!r}: the served canvas is {canvas} x {canvas}")
    return PreprocessConfig(
        canvas, crop_pct=1.0, shortest_edge=size["shortest_edge"], longest_edge=size["longest_edge"], **pixels
    )
