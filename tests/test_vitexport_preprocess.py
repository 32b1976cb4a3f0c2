"""The one preprocessing description against the libraries it describes (issue 23): transformers' image processors
(ViT, which Swin uses, DeiT, BEiT, MobileViT, ConvNeXt, DETR), on both their backends (Pillow and torchvision), mapped
from their preprocessor_config.json, give the processors' own pixels; timm's pretrained_cfg, mapped, gives timm's eval
transform's; what cannot be expressed is refused in one line naming the key; and every sidecar written before the
description grew still loads. Run under transformers 4.57 (the version Optimum needs) and 5.x alike."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from vitexport.errors import ArtifactError
from vitexport.preprocess import (
    PreprocessConfig,
    from_hf_processor,
    from_timm_cfg,
    preprocess_detection,
    preprocess_image,
)

pytest.importorskip("skimage")


def _photos() -> dict[str, Image.Image]:
    """Real photographs (scikit-image's) of every shape that tells the semantics apart: landscape, portrait, square,
    odd sides (the crop offsets' rounding), smaller than every crop (an upscale)."""
    import skimage.data

    chelsea = Image.fromarray(skimage.data.chelsea())
    return {
        "landscape 640x427": Image.fromarray(skimage.data.rocket()),
        "portrait 400x600": Image.fromarray(skimage.data.coffee()).transpose(Image.Transpose.ROTATE_90),
        "square 512x512": Image.fromarray(skimage.data.astronaut()),
        "odd 451x300": chelsea,
        "small 100x150": chelsea.crop((150, 50, 250, 200)),
    }


PHOTOS = _photos()

# (processor, keyword arguments): each processor's defaults, then settings that exercise each key it honours.
PROCESSORS = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"resample": 3, "do_normalize": False, "size": {"height": 256, "width": 256}}),
    ("ViTImageProcessor", {"size": {"shortest_edge": 240}, "do_center_crop": True, "crop_size": 224, "resample": 0}),
    ("DeiTImageProcessor", {}),
    ("DeiTImageProcessor", {"size": {"height": 257, "width": 255}, "resample": 2, "rescale_factor": 1 / 127.5}),
    ("DeiTImageProcessor", {"size": {"height": 200, "width": 240}, "resample": 4}),  # a crop over the resize: pads
    ("DeiTImageProcessor", {"size": {"height": 201, "width": 255}}),  # ... by an odd 23 rows: floor and trunc differ
    ("BeitImageProcessor", {}),
    ("BeitImageProcessor", {"do_center_crop": True, "size": {"height": 256, "width": 256}, "resample": 5}),
    ("MobileViTImageProcessor", {}),  # shortest edge 224, crop 256: the crop pads
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}, "resample": 2}),  # apple/mobilevit-small's
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}, "do_flip_channel_order": False, "do_rescale": False}),
    ("ConvNextImageProcessor", {}),  # 384: a warp, no crop
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}),  # int(224 / 0.875) = 256, crop 224
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 161}, "crop_pct": 0.95, "resample": 1}),
]
MODULES = {
    "ViT": "vit",
    "DeiT": "deit",
    "Beit": "beit",
    "MobileViT": "mobilevit",
    "ConvNext": "convnext",
    "Detr": "detr",
}


def _transformers_4(transformers) -> bool:
    return transformers.__version__.startswith("4.")


def _pil_processor(transformers, name: str, kwargs: dict):
    """transformers' processor on its Pillow path (transformers 4's `name`, 5's `name`Pil)."""
    if _transformers_4(transformers):
        return getattr(transformers, name)(**kwargs)
    module = MODULES[name.removesuffix("ImageProcessor")]
    pil = importlib.import_module(f"transformers.models.{module}.image_processing_pil_{module}")
    return getattr(pil, f"{name}Pil")(**kwargs)


def _torchvision_processor(transformers, name: str, kwargs: dict):
    """transformers' processor on its torchvision path (transformers 4's `name`Fast, 5's `name`)."""
    return getattr(transformers, f"{name}Fast" if _transformers_4(transformers) else name)(**kwargs)


def _saved(processor, folder) -> dict:
    processor.save_pretrained(folder)  # the file as save_pretrained (and Optimum) leave it
    return json.loads((folder / "preprocessor_config.json").read_text())


def _mapped(transformers, d: dict, backend: str, **kwargs) -> PreprocessConfig:
    """The file as the running transformers reads it: 4 from the type alone (...Fast: torchvision), 5 as
    AutoImageProcessor.from_pretrained(path, backend=...) (it writes the same type for both backends)."""
    cfg = from_hf_processor(d, backend=None if _transformers_4(transformers) else backend, **kwargs)
    assert cfg.resize_backend == backend
    return cfg


def _id(case) -> str:
    return f"{case[0].removesuffix('ImageProcessor')}-{json.dumps(case[1], sort_keys=True)}"


@pytest.mark.parametrize("case", PROCESSORS, ids=_id)
def test_a_processors_pixels_are_transformers_own(transformers, case, tmp_path):
    name, kwargs = case
    processor = _pil_processor(transformers, name, kwargs)
    if _transformers_4(transformers) and name == "ViTImageProcessor" and "shortest_edge" in str(kwargs):
        # transformers 4's Pillow ViT/DeiT/BEiT resize takes {height, width} only: the processor fails, we refuse
        with pytest.raises(ArtifactError, match=r"^size: \{'shortest_edge': 240\}: transformers 4's ViT"):
            from_hf_processor(_saved(processor, tmp_path))
        return
    cfg = _mapped(transformers, _saved(processor, tmp_path), "pil")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the served model's copy
    for shape, photo in PHOTOS.items():
        expected = processor(images=photo, return_tensors="np")["pixel_values"][0]
        got = preprocess_image(photo, cfg)
        assert got.shape == expected.shape == (3, cfg.input_size, cfg.input_size), shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=shape)


# torchvision resizes a tensor with nearest, lanczos, bilinear and bicubic only (box and hamming are refused).
TORCHVISION = [c for c in PROCESSORS if c[1].get("resample") not in (4, 5)]
TORCHVISION += [("BeitImageProcessor", {"do_center_crop": True, "size": {"height": 201, "width": 230}, "resample": 0})]


@pytest.mark.parametrize("case", TORCHVISION, ids=_id)
def test_a_torchvision_processors_pixels_are_transformers_own(transformers, case, tmp_path):
    """transformers' torchvision processors (4's ...Fast, 5's default) resize with torch's antialiased kernels on the
    uint8 image, truncate the crop's offsets (4's ConvNeXt rounds them), fuse rescale into normalisation: a few levels
    of 255 from Pillow's pixels, which resize_backend torchvision reproduces exactly."""
    name, kwargs = case
    processor = _torchvision_processor(transformers, name, kwargs)
    cfg = _mapped(transformers, _saved(processor, tmp_path), "torchvision")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the served model's copy
    # Another rounding of the crop's offsets, where the config allows one (round: not with a crop over the resize).
    smallest = min(cfg.resize) if isinstance(cfg.resize, tuple) else cfg.resize_short
    other = "round" if cfg.crop_rounding == "trunc" and smallest >= cfg.input_size else "floor"
    offsets_tell = False
    for shape, photo in PHOTOS.items():
        expected = processor(images=photo, return_tensors="pt")["pixel_values"][0].numpy()  # 4.57: "pt" only
        got = preprocess_image(photo, cfg)
        assert got.shape == expected.shape == (3, cfg.input_size, cfg.input_size), shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=shape)
        if cfg.crop:
            shifted = preprocess_image(photo, replace(cfg, crop_rounding=other))
            offsets_tell |= not np.allclose(shifted, expected, atol=1e-5, rtol=0)
    if "201" in json.dumps(kwargs) or (name, kwargs) == ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}):
        # odd crop differences (-23 rows; 383 - 224 columns on the landscape): the rounding is the processor's
        assert offsets_tell, (cfg.crop_rounding, other)


def test_the_two_backends_pixels_differ(transformers):
    """Why the backend is part of the description: on a portrait photo the same geometry is levels apart."""
    d = {"image_processor_type": "DeiTImageProcessor", "size": {"height": 256, "width": 256}, "crop_size": 224}
    photo = PHOTOS["portrait 400x600"]
    pil, torchvision = from_hf_processor(d), from_hf_processor(d, backend="torchvision")
    levels = np.abs(preprocess_image(photo, pil) - preprocess_image(photo, torchvision)) / (pil.rescale / 0.5)
    assert levels.max() >= 2 and levels.mean() < 0.5, (levels.max(), levels.mean())


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("shape", ["landscape 640x427", "portrait 400x600", "small 100x150"])
def test_detr_pixels_and_mask_are_transformers_own(transformers, shape, backend):
    canvas = 160
    kwargs = {
        "size": {"shortest_edge": 96, "longest_edge": canvas},
        "pad_size": {"height": canvas, "width": canvas},
        "resample": 3,
        "rescale_factor": 1 / 200,
    }
    processors = {"pil": _pil_processor, "torchvision": _torchvision_processor}
    processor = processors[backend](transformers, "DetrImageProcessor", kwargs)
    cfg = _mapped(transformers, json.loads(processor.to_json_string()), backend, input_size=canvas)
    assert (cfg.shortest_edge, cfg.longest_edge, cfg.interpolation) == (96, canvas, "bicubic")
    reference = processor(images=PHOTOS[shape], return_tensors="pt")
    ours = preprocess_detection(PHOTOS[shape], cfg)
    np.testing.assert_array_equal(ours.mask, reference["pixel_mask"][0].numpy())
    np.testing.assert_allclose(ours.pixels, reference["pixel_values"][0].numpy(), atol=1e-5, rtol=0)


def test_transformers_4_configs_map_as_they_did_there():
    # google/vit-base-patch16-224's and facebook/detr-resnet-50's files as transformers 4 wrote them: int sizes.
    vit = {"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "resample": 2, "image_mean": [0.5] * 3}
    assert from_hf_processor(vit).resize == (224, 224)
    mobilevit = {"image_processor_type": "MobileViTImageProcessor", "size": 288, "crop_size": 256, "resample": 2}
    assert (from_hf_processor(mobilevit).resize, from_hf_processor(mobilevit).input_size) == (288, 256)
    detr = {"feature_extractor_type": "DetrFeatureExtractor", "size": 800, "max_size": 1333, "format": "coco_detection"}
    assert (from_hf_processor(detr).shortest_edge, from_hf_processor(detr).longest_edge) == (800, 1333)
    fast = {"image_processor_type": "ViTImageProcessorFast", "size": {"height": 224, "width": 224}, "crop_size": None}
    assert from_hf_processor(fast | {"data_format": "channels_first", "default_to_square": True}).input_size == 224


VIT = {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}}
FAST_VIT = VIT | {"image_processor_type": "ViTImageProcessorFast"}
DEIT = {"image_processor_type": "DeiTImageProcessor", "size": {"height": 256, "width": 256}, "crop_size": 224}
CONVNEXT = {"image_processor_type": "ConvNextImageProcessor", "resample": 3}
REFUSED = [
    ({"image_processor_type": "CLIPImageProcessor"}, "image_processor_type 'CLIPImageProcessor' is not one"),
    (VIT | {"do_resize": False}, "do_resize: false"),
    (VIT | {"do_pad": True}, "do_pad: true"),
    (VIT | {"resample": 7}, "resample: 7 is not one of Pillow's filters"),
    (VIT | {"size": {"height": 224, "width": 256}}, "size: 224 x 256 with no centre crop"),
    (FAST_VIT | {"size": {"shortest_edge": 224}}, "size: shortest_edge 224 with no centre crop"),
    (VIT | {"size": {"shortest_edge": 224, "longest_edge": 300}}, "size: {'shortest_edge': 224, 'longest_edge'"),
    (VIT | {"size": {"max_height": 224, "max_width": 224}}, "size: {'max_height'"),
    (DEIT | {"crop_size": {"height": 224, "width": 200}}, "crop_size: {'height': 224, 'width': 200}"),
    ({"image_processor_type": "DeiTImageProcessor", "size": 256, "do_center_crop": True}, "crop_size: missing"),
    ({"image_processor_type": "ViTImageProcessor"}, "size: missing"),
    (VIT | {"do_flip_channel_order": True}, "do_flip_channel_order: not a ViTImageProcessor key"),
    (VIT | {"image_mean": [0.5, 0.5]}, "image_mean: [0.5, 0.5] is not three numbers"),
    (VIT | {"image_std": [0.5, 0, 0.5]}, "image_std: [0.5, 0.0, 0.5] must be over 0"),
    (VIT | {"rescale_factor": -1}, "rescale_factor: -1 is not a number over 0"),
    (VIT | {"data_format": "channels_last"}, "data_format: 'channels_last'"),
    (CONVNEXT | {"size": {"shortest_edge": 224}, "crop_pct": 1.2}, "crop_pct"),
    (CONVNEXT | {"size": {"height": 224, "width": 224}}, "size: {'height'"),
    (
        CONVNEXT | {"size": 224, "do_center_crop": True},
        "do_center_crop: true: ConvNextImageProcessor crops by crop_pct already",
    ),
    ({"image_processor_type": "DetrImageProcessor", "size": {"height": 800, "width": 800}}, "size: {'height'"),
    ({"image_processor_type": "DetrImageProcessor", "size": 800, "do_pad": False}, "do_pad: false"),
    ({"image_processor_type": "DetrImageProcessor", "size": 800, "pad_size": 900}, "pad_size: 900"),
    # defaults transformers 4 and 5 disagree on: a file save_pretrained wrote always has them
    ({"image_processor_type": "MobileViTImageProcessor", "size": 288, "crop_size": 256}, "resample: missing"),
    ({"image_processor_type": "ConvNextImageProcessorFast", "size": 224}, "resample: missing"),
    ({"image_processor_type": "BeitImageProcessor", "size": 224}, "do_center_crop: missing"),
    # the torchvision backend: its filters, and which backend the file says
    (VIT | {"image_processor_type": "ViTImageProcessorFast", "resample": 4}, "resample: 4 (box): torchvision cannot"),
    (VIT | {"image_processor_type": "ViTImageProcessorFast", "resample": 5}, "resample: 5 (hamming): torchvision"),
    # neither transformers reads these from the file (AutoImageProcessor's keywords): refused, not guessed at
    (VIT | {"use_fast": True}, "use_fast: not a ViTImageProcessor key"),
    (VIT | {"backend": "torchvision"}, "backend: not a ViTImageProcessor key"),
    # what transformers 4's Pillow processors do otherwise than 5's (the caller's backend reads the file as 5 does)
    (VIT | {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224}, "size: {'shortest_edge': 256}"),
    (DEIT | {"size": {"shortest_edge": 256}}, "size: {'shortest_edge': 256}: transformers 4's DeiTImageProcessor"),
    (VIT | {"size": 256, "do_center_crop": True, "crop_size": 224}, "do_center_crop: true: transformers 4's ViT"),
]


@pytest.mark.parametrize(("config", "message"), REFUSED, ids=[m.split(":")[0] for _, m in REFUSED])
def test_what_cannot_be_expressed_is_refused_in_one_line(config, message):
    with pytest.raises(ArtifactError) as refused:
        from_hf_processor(config)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value), str(refused.value)


def test_the_backend_is_transformers_4s_from_the_type_or_the_callers_as_in_5():
    assert from_hf_processor(VIT).resize_backend == "pil"  # transformers 4's AutoImageProcessor
    assert from_hf_processor(VIT, backend="torchvision").resize_backend == "torchvision"  # 5's default, said
    fast = VIT | {"image_processor_type": "ViTImageProcessorFast"}
    assert from_hf_processor(fast).resize_backend == "torchvision"
    assert from_hf_processor(fast, backend="pil").resize_backend == "pil"  # AutoImageProcessor(..., backend="pil")
    assert from_hf_processor(VIT | {"image_processor_type": "ViTImageProcessorPil"}).resize_backend == "pil"
    # where 4 and 5 differ, the caller's backend reads the file as 5 does: ViT's crop; ConvNeXt's crop offsets
    cropping = VIT | {"size": 256, "do_center_crop": True, "crop_size": 224}
    assert from_hf_processor(cropping, backend="pil").input_size == 224
    convnext = CONVNEXT | {"image_processor_type": "ConvNextImageProcessorFast", "size": 224}
    assert from_hf_processor(convnext).crop_rounding == "round"  # 4's Fast: torchvision's center_crop
    assert from_hf_processor(convnext, backend="torchvision").crop_rounding == "trunc"  # 5's: transformers' own
    with pytest.raises(ArtifactError, match=r"^backend: 'fast' is not pil or torchvision$"):
        from_hf_processor(VIT, backend="fast")
    # the sidecar names the backend only when it is not Pillow's: every earlier sidecar reads as it did
    assert "resize_backend" not in from_hf_processor(VIT).to_dict()
    assert from_hf_processor(fast).to_dict()["resize_backend"] == "torchvision"


def test_the_models_size_must_be_the_processors():
    assert from_hf_processor(DEIT, input_size=224).input_size == 224
    with pytest.raises(ArtifactError, match=r"^size: the processor makes 224 x 224 images; the model takes 256$"):
        from_hf_processor(DEIT, input_size=256)


def test_sidecars_written_before_the_description_grew_still_load():
    # A classifier's and a detector's preprocess dicts exactly as earlier vitexports wrote them.
    old = {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.9, "interpolation": "bicubic"}
    cfg = PreprocessConfig.from_dict(old)
    assert cfg == PreprocessConfig(224, (0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert cfg.to_dict() == old  # and what is written for them is what they wrote
    detector = old | {"crop_pct": 1.0, "interpolation": "bilinear", "shortest_edge": 800, "longest_edge": 1333}
    assert PreprocessConfig.from_dict(detector).to_dict() == detector


def test_a_sidecar_with_an_inconsistent_description_is_refused():
    base = {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "bicubic"}
    for extra, message in [
        ({"interpolation": "area"}, "interpolation must be one of"),
        ({"resize": [256, 256], "crop": False}, "without a centre crop the resize must make the model's 224 x 224"),
        ({"resize": 200}, "a resize to 200 is smaller than the 224 x 224 crop"),
        ({"channel_order": "GBR"}, "channel_order must be RGB or BGR"),
        ({"crop_rounding": "ceil"}, "crop_rounding must be one of round, floor, trunc"),
        ({"resize_backend": "cuda"}, "resize_backend must be pil or torchvision"),
        ({"resize_backend": "torchvision", "interpolation": "box"}, "torchvision resizes with nearest, lanczos"),
    ]:
        with pytest.raises(ArtifactError, match=f"^preprocessing: {message}"):
            PreprocessConfig.from_dict(base | extra)


def test_only_a_torchvision_config_imports_torch():
    """The served preprocessing model calls the same function: a Pillow config must not pay torch's start-up (seconds,
    and some 250 MB per instance: docs/preprocessing.md)."""
    script = (
        "import sys, skimage.data\n"
        "from vitexport.preprocess import from_hf_processor, preprocess_image\n"
        "vit = {'image_processor_type': 'ViTImageProcessor', 'size': {'height': 32, 'width': 32}}\n"
        "import io; from PIL import Image; buffer = io.BytesIO()\n"
        "Image.fromarray(skimage.data.astronaut()).save(buffer, 'PNG')\n"
        "preprocess_image(buffer.getvalue(), from_hf_processor(vit))\n"
        "print('torch' in sys.modules, end=' ')\n"
        "preprocess_image(buffer.getvalue(), from_hf_processor(vit, backend='torchvision'))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_without_torchvision_a_torchvision_config_is_one_line():
    script = (
        "import sys; sys.modules['torchvision'] = None\n"  # as if not installed
        "from vitexport.preprocess import from_hf_processor, preprocess_image\n"
        "from vitexport.errors import VitExportError\n"
        "vit = {'image_processor_type': 'ViTImageProcessorFast', 'size': {'height': 32, 'width': 32}}\n"
        "try:\n"
        "    preprocess_image(__import__('PIL.Image').Image.new('RGB', (40, 30)), from_hf_processor(vit))\n"
        "except VitExportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("this model's preprocessing is transformers' torchvision processors'"), out.stdout
    assert out.stdout.count("\n") == 1 and "needs torch and torchvision: " in out.stdout


# -- timm ------------------------------------------------------------------------------------------------------------

# Where the registry follows the checkpoint's own release rather than timm's pretrained_cfg (crop_pct 0.9): the DeiT
# and MAE papers evaluate 224 px with a 256 resize (224 / 256 = 0.875), as transformers' DeiT processor does.
PAPER_CROP = {"deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"}
PAPER_CROP |= {f"deit_{s}_distilled_patch16_224" for s in ("tiny", "small", "base")}
PAPER_CROP |= {f"mae_vit_{s}_patch{p}_224" for s, p in (("base", 16), ("large", 16), ("huge", 14))}


def _hub_specs():
    from vitexport.models import list_models

    return [s for s in list_models() if s.hub_id is not None and s.task == "classification"]


def test_the_registered_preprocessing_is_timms_pretrained_cfg(timm):
    from timm.models import get_pretrained_cfg

    for spec in _hub_specs():
        mapped = from_timm_cfg(get_pretrained_cfg(spec.hub_id).to_dict())
        if spec.name in PAPER_CROP:
            assert (mapped.crop_pct, spec.preprocess.crop_pct) == (0.9, 0.875), spec.name
            mapped = replace(mapped, crop_pct=0.875)
        assert mapped == spec.preprocess, spec.name


def _timm_transform(timm, cfg: dict):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, pretrained_cfg=cfg))


def test_timms_eval_transform_gives_the_same_pixels(timm):
    """Every distinct registered preprocessing, and timm's squash crop, against create_transform (Pillow through
    torchvision's Resize and CenterCrop)."""
    configs = {}
    for spec in _hub_specs():
        p = spec.preprocess
        cfg = {"input_size": (3, p.input_size, p.input_size), "crop_pct": p.crop_pct, "crop_mode": "center"}
        configs[json.dumps(p.to_dict())] = cfg | {"interpolation": p.interpolation, "mean": p.mean, "std": p.std}
    squash = {"input_size": (3, 224, 224), "crop_pct": 0.95, "crop_mode": "squash", "interpolation": "bilinear"}
    for cfg in [*configs.values(), squash | {"mean": (0.5,) * 3, "std": (0.5,) * 3}]:
        ours, transform = from_timm_cfg(cfg), _timm_transform(timm, cfg)
        for shape, photo in PHOTOS.items():
            expected = transform(photo).numpy()
            np.testing.assert_allclose(preprocess_image(photo, ours), expected, atol=1e-5, rtol=0, err_msg=shape)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"input_size": (3, 224, 256)}, r"^input_size: \(3, 224, 256\)"),
        ({"input_size": (3, 224, 224), "crop_mode": "border"}, "^crop_mode: 'border'"),
        ({"input_size": (3, 224, 224), "interpolation": "random"}, "^interpolation: 'random'"),
    ],
)
def test_a_timm_cfg_that_cannot_be_expressed_is_refused(cfg, message):
    with pytest.raises(ArtifactError, match=message):
        from_timm_cfg(cfg)
