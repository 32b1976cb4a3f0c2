"""A detector's pre- and post-processing (vitexport/preprocess/, vitexport/postprocess.py) against transformers'
DETR image processor: the same pixels, mask and boxes, on real photographs of several shapes."""

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vitexport.errors import ImageError
from vitexport.export.photos import load_photo
from vitexport.models import get_spec
from vitexport.postprocess import detections
from vitexport.preprocess import detection_size, preprocess_detection, preprocess_image

CANVAS = 96
CONFIG = replace(get_spec("test_detr").preprocess, input_size=CANVAS, shortest_edge=64, longest_edge=CANVAS)
# (height, width) crops of a photograph: landscape, portrait, square, one that the longest edge limits, a sliver.
SHAPES = [(70, 120), (200, 50), (96, 96), (40, 300), (9, 130)]


def _photo(shape) -> Image.Image:
    h, w = shape
    return Image.fromarray(np.ascontiguousarray(load_photo("chelsea")[:h, :w]))


@pytest.mark.parametrize("shape", SHAPES)
def test_pixels_and_mask_are_transformers_with_a_fixed_canvas(transformers, shape):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    processor = DetrImageProcessorPil(
        size={"shortest_edge": CONFIG.shortest_edge, "longest_edge": CONFIG.longest_edge},
        pad_size={"height": CANVAS, "width": CANVAS},
        image_mean=list(CONFIG.mean),
        image_std=list(CONFIG.std),
    )
    image = _photo(shape)
    reference = processor(images=image, return_tensors="np")
    ours = preprocess_detection(image, CONFIG)
    assert ours.size == shape
    np.testing.assert_array_equal(ours.mask, reference["pixel_mask"][0])
    np.testing.assert_allclose(ours.pixels, reference["pixel_values"][0], atol=1e-5)


def test_the_canvas_bounds_the_resize_and_bytes_decode_alike():
    # DETR's own resize of a 480 x 640 photo is 800 x 1066: on an 800 canvas it is scaled to fit, aspect kept.
    cfg = get_spec("detr_resnet50").preprocess
    assert detection_size(480, 640, cfg) == (600, 800) and detection_size(1000, 1000, cfg) == (800, 800)
    buf = io.BytesIO()
    _photo((70, 120)).save(buf, "PNG")
    from_bytes, from_image = (
        preprocess_detection(buf.getvalue(), CONFIG),
        preprocess_detection(_photo((70, 120)), CONFIG),
    )
    np.testing.assert_array_equal(from_bytes.pixels, from_image.pixels)
    with pytest.raises(ImageError, match="a classifier's preprocessing"):
        preprocess_detection(buf.getvalue(), get_spec("test_vit").preprocess)
    with pytest.raises(ImageError, match="a detector's preprocessing"):
        preprocess_image(buf.getvalue(), CONFIG)
    with pytest.raises(ImageError, match="empty image"):
        preprocess_detection(b"", CONFIG)


def test_detections_are_transformers_post_processing_in_pixels(transformers):
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil
    from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

    rng = np.random.default_rng(0)
    logits = (rng.normal(0, 3, (2, 30, 6))).astype(np.float32)  # 30 queries, 5 classes + no-object
    boxes = rng.uniform(0.05, 0.95, (2, 30, 4)).astype(np.float32)
    sizes = [(480, 640), (333, 500)]
    output = DetrObjectDetectionOutput(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
    reference = DetrImageProcessorPil().post_process_object_detection(output, threshold=0.3, target_sizes=sizes)
    names = ["cat", "dog", "car", "bus", "cup"]
    for i, size in enumerate(sizes):
        ours = detections(logits[i], boxes[i], size, threshold=0.3, labels=names)
        r = reference[i]
        expected = sorted(zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist(), strict=True))[::-1]
        assert len(ours) == len(expected) > 3
        for d, (score, label, box) in zip(ours, expected, strict=True):
            assert d.score == pytest.approx(score, abs=1e-6) and d.class_index == label and d.label == names[label]
            np.testing.assert_allclose(d.box, box, atol=1e-3)
        assert [d.score for d in ours] == sorted((d.score for d in ours), reverse=True)
        top = detections(logits[i], boxes[i], size, threshold=0.3, top_k=2)
        assert [d.score for d in top] == [d.score for d in ours[:2]] and top[0].label == str(top[0].class_index)
    with pytest.raises(ValueError, match="threshold"):
        detections(logits[0], boxes[0], sizes[0], threshold=1.5)
