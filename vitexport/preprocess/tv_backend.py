"""The torchvision backend (`PreprocessConfig.resize_backend == "torchvision"`): the pixels of transformers' torchvision
image processors (transformers 4's `...ImageProcessorFast`, 5's default `...ImageProcessor`), made by the calls their
pipeline makes (transformers 4.57 image_processing_utils_fast.BaseImageProcessorFast, 5.x TorchvisionBackend):

    the RGB image as a uint8 (3, H, W) tensor -> torchvision.transforms.v2.functional.resize(antialias=True) ->
    the centre crop (transformers' own: pad with zeros, offsets truncated; ConvNeXt's in 4.x: torchvision's, rounded)
    -> rescale and normalise fused: normalize(x.float(), mean / rescale, std / rescale), or x * rescale alone
    -> MobileViT's channel flip.

The geometry (sizes, crop box) is transform.py's, shared with the Pillow path; only the kernels and the float
arithmetic are torch's. torch and torchvision are imported on first use: a Pillow config never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitexport.errors import ArtifactError, first_line
from vitexport.preprocess.config import PreprocessConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

_libraries: list[Any] = []  # keeps the declared op library (and its definitions) alive for the process


def declare_torchvision_ops() -> None:
    """Let torchvision's Python code import with a CPU-only torch.

    The only torchvision wheel that pairs with torch 2.13 on PyPI is a CUDA build whose C++ extension cannot load
    here; its Python side then fails registering fake kernels for `torchvision::nms`/`qnms`, ops the extension
    would have defined. Declaring those two schemas (never called by a resize or by any classification model) lets
    torchvision's transforms, timm and transformers import; none of what they use here touches the extension.
    """
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _libraries.append(lib)


def load(threads: int | None = None) -> Any:
    """torchvision.transforms.v2.functional, imported (torch with it); `threads` sets torch's intra-op threads (the
    served preprocessing model asks for 1: its parallelism is Triton's instances, as with Pillow)."""
    try:
        import torch

        declare_torchvision_ops()
        from torchvision.transforms.v2 import functional
    except ImportError as e:  # torchvision is installed apart (scripts/setup.sh): say what is missing, in one line
        raise ArtifactError(
            f"this model's preprocessing is transformers' torchvision processors' (resize_backend torchvision) and "
            f"needs torch and torchvision: {first_line(e)}"
        ) from None
    if threads is not None:
        torch.set_num_threads(threads)
    return functional


def _modes(F: Any) -> dict[str, Any]:
    # transformers' pil_torch_interpolation_mapping: Pillow's NEAREST is torch's nearest-exact (Pillow's rounding).
    modes = F.InterpolationMode
    return {
        "nearest": modes.NEAREST_EXACT,
        "lanczos": modes.LANCZOS,
        "bilinear": modes.BILINEAR,
        "bicubic": modes.BICUBIC,
    }


def pixels(
    image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None, cfg: PreprocessConfig
) -> np.ndarray:
    """An RGB image -> float32 (3, h, w): resized to `size` (width, height), cropped to `box` (left, top, right,
    bottom; outside the image: zeros, as transformers pads), rescaled, normalised, in the config's channel order."""
    import numpy as np
    import torch

    F = load()
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # uint8 (3, H, W), as transformers 5 makes it
    x = F.resize(x, [size[1], size[0]], interpolation=_modes(F)[cfg.interpolation], antialias=True)
    if box is not None:
        left, top, right, bottom = box
        x = F.crop(x, top, left, bottom - top, right - left)  # out of the image: zero padding
    x = _rescaled_normalised(x, cfg)
    if cfg.channel_order == "BGR":
        x = x.flip(0)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def _rescaled_normalised(x: Any, cfg: PreprocessConfig) -> Any:
    """transformers' rescale_and_normalize: with normalisation, rescale folded into mean and std (mean / rescale,
    computed in float32 as torch.tensor(mean) * (1 / rescale)); without, x * rescale on the uint8 tensor."""
    import torch

    F = load()
    if cfg.mean != (0.0, 0.0, 0.0) or cfg.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(cfg.mean) * (1.0 / cfg.rescale)
        std = torch.tensor(cfg.std) * (1.0 / cfg.rescale)
        return F.normalize(x.to(dtype=torch.float32), mean, std)
    if cfg.rescale != 1.0:
        return x * cfg.rescale
    return x.to(dtype=torch.float32)


def detection_canvas(image: Image.Image, size: tuple[int, int], cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """A detector's pixels on the S x S canvas and their mask, as DetrImageProcessorFast makes them: resize to `size`
    (width, height), rescale and normalise, then zeros on the right and bottom; the mask 1 on the image."""
    import numpy as np

    w, h = size
    S = cfg.input_size
    canvas = np.zeros((3, S, S), np.float32)
    canvas[:, :h, :w] = pixels(image, size, None, cfg)
    mask = np.zeros((S, S), np.int64)
    mask[:h, :w] = 1
    return canvas, mask
