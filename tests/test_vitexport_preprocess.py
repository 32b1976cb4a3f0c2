"""The one preprocessing description against the libraries it describes (issue 23): transformers' image processors
(ViT, which Swin uses, DeiT, BEiT, MobileViT, ConvNeXt, DETR), mapped from their preprocessor_config.json, give the
processors' own pixels; timm's pretrained_cfg, mapped, gives timm's eval transform's; what cannot be expressed is
refused in one line naming the key; and every sidecar written before the description grew still loads."""

from __future__ import annotations

import importlib
import json
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
    ("BeitImageProcessor", {}),
    ("BeitImageProcessor", {"do_center_crop": True, "size": {"height": 256, "width": 256}, "resample": 5}),
    ("MobileViTImageProcessor", {}),  # shortest edge 224, crop 256: the crop pads
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}, "resample": 2}),  # apple/mobilevit-small's
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}, "do_flip_channel_order": False, "do_rescale": False}),
    ("ConvNextImageProcessor", {}),  # 384: a warp, no crop
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}),  # int(224 / 0.875) = 256, crop 224
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 161}, "crop_pct": 0.95, "resample": 1}),
]
MODULES = {"ViT": "vit", "DeiT": "deit", "Beit": "beit", "MobileViT": "mobilevit", "ConvNext": "convnext"}


def _pil_processor(transformers, name: str, kwargs: dict):
    """transformers' processor on its Pillow path (transformers 4's default, 5's ...Pil)."""
    module = MODULES[name.removesuffix("ImageProcessor")]
    pil = importlib.import_module(f"transformers.models.{module}.image_processing_pil_{module}")
    return getattr(pil, f"{name}Pil")(**kwargs)


def _id(case) -> str:
    return f"{case[0].removesuffix('ImageProcessor')}-{json.dumps(case[1], sort_keys=True)}"


@pytest.mark.parametrize("case", PROCESSORS, ids=_id)
def test_a_processors_pixels_are_transformers_own(transformers, case, tmp_path):
    name, kwargs = case
    processor = _pil_processor(transformers, name, kwargs)
    processor.save_pretrained(tmp_path)  # the file as save_pretrained (and Optimum) leave it
    cfg = from_hf_processor(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the served model's copy
    for shape, photo in PHOTOS.items():
        expected = processor(images=photo, return_tensors="np")["pixel_values"][0]
        got = preprocess_image(photo, cfg)
        assert got.shape == expected.shape == (3, cfg.input_size, cfg.input_size), shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=shape)


@pytest.mark.parametrize("case", [c for c in PROCESSORS if c[1].get("resample", 2) in (2, 3)], ids=_id)
def test_the_torchvision_path_has_the_same_geometry(transformers, case):
    """transformers 5's default processors (4's ...Fast) resize the same geometry with torch's kernels: their pixels
    differ from Pillow's by a few levels of 255 on some pixels, a fraction of a level on average. A wrong size, crop
    offset or channel order would be levels off on average (a one-pixel crop shift on these photos: over 3)."""
    name, kwargs = case
    processor = getattr(transformers, name)(**kwargs)
    cfg = from_hf_processor(json.loads(processor.to_json_string()))
    scale = cfg.rescale / min(cfg.std)  # one level of 255 in the model's units
    for shape, photo in PHOTOS.items():
        levels = np.abs(preprocess_image(photo, cfg) - processor(images=photo, return_tensors="np")["pixel_values"][0])
        levels /= scale
        assert levels.mean() < 0.5 and levels.max() <= 16, (shape, levels.mean(), levels.max())


@pytest.mark.parametrize("shape", ["landscape 640x427", "portrait 400x600", "small 100x150"])
def test_detr_pixels_and_mask_are_transformers_own(transformers, shape):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    canvas = 160
    processor = DetrImageProcessorPil(
        size={"shortest_edge": 96, "longest_edge": canvas},
        pad_size={"height": canvas, "width": canvas},
        resample=3,
        rescale_factor=1 / 200,
    )
    cfg = from_hf_processor(json.loads(processor.to_json_string()), input_size=canvas)
    assert (cfg.shortest_edge, cfg.longest_edge, cfg.interpolation) == (96, canvas, "bicubic")
    reference = processor(images=PHOTOS[shape], return_tensors="np")
    ours = preprocess_detection(PHOTOS[shape], cfg)
    np.testing.assert_array_equal(ours.mask, reference["pixel_mask"][0])
    np.testing.assert_allclose(ours.pixels, reference["pixel_values"][0], atol=1e-5, rtol=0)


def test_transformers_4_configs_map_as_they_did_there():
    # google/vit-base-patch16-224's and facebook/detr-resnet-50's files as transformers 4 wrote them: int sizes.
    vit = {"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "resample": 2, "image_mean": [0.5] * 3}
    assert from_hf_processor(vit).resize == (224, 224)
    mobilevit = {"image_processor_type": "MobileViTImageProcessor", "size": 288, "crop_size": 256}
    assert (from_hf_processor(mobilevit).resize, from_hf_processor(mobilevit).input_size) == (288, 256)
    detr = {"feature_extractor_type": "DetrFeatureExtractor", "size": 800, "max_size": 1333, "format": "coco_detection"}
    assert (from_hf_processor(detr).shortest_edge, from_hf_processor(detr).longest_edge) == (800, 1333)
    fast = {"image_processor_type": "ViTImageProcessorFast", "size": {"height": 224, "width": 224}, "crop_size": None}
    assert from_hf_processor(fast | {"data_format": "channels_first", "default_to_square": True}).input_size == 224


VIT = {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}}
DEIT = {"image_processor_type": "DeiTImageProcessor", "size": {"height": 256, "width": 256}, "crop_size": 224}
REFUSED = [
    ({"image_processor_type": "CLIPImageProcessor"}, "image_processor_type 'CLIPImageProcessor' is not one"),
    (VIT | {"do_resize": False}, "do_resize: false"),
    (VIT | {"do_pad": True}, "do_pad: true"),
    (VIT | {"resample": 7}, "resample: 7 is not one of Pillow's filters"),
    (VIT | {"size": {"height": 224, "width": 256}}, "size: 224 x 256 with no centre crop"),
    (VIT | {"size": {"shortest_edge": 224}}, "size: shortest_edge 224 with no centre crop"),
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
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}, "crop_pct": 1.2}, "crop_pct"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 224, "width": 224}}, "size: {'height'"),
    (
        {"image_processor_type": "ConvNextImageProcessor", "size": 224, "do_center_crop": True},
        "do_center_crop: true: ConvNextImageProcessor crops by crop_pct already",
    ),
    ({"image_processor_type": "DetrImageProcessor", "size": {"height": 800, "width": 800}}, "size: {'height'"),
    ({"image_processor_type": "DetrImageProcessor", "size": 800, "do_pad": False}, "do_pad: false"),
    ({"image_processor_type": "DetrImageProcessor", "size": 800, "pad_size": 900}, "pad_size: 900"),
]


@pytest.mark.parametrize(("config", "message"), REFUSED, ids=[m.split(":")[0] for _, m in REFUSED])
def test_what_cannot_be_expressed_is_refused_in_one_line(config, message):
    with pytest.raises(ArtifactError) as refused:
        from_hf_processor(config)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value), str(refused.value)


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
    ]:
        with pytest.raises(ArtifactError, match=f"^preprocessing: {message}"):
            PreprocessConfig.from_dict(base | extra)


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
