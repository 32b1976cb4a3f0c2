"""Image preprocessing: a model's config (registered with the model, recorded in every artifact) and the one function
that applies it, in numpy and Pillow only.

The CLI, the accuracy gate and the Triton ensemble's preprocessing model all call this one function, so a
served model sees exactly the pixels the reference saw. The modules: config (PreprocessConfig), decode (an image
source to RGB, within the size limits), transform (preprocess_image, preprocess_detection), limits (a served
request's bounds), hf (transformers' preprocessor_config.json), timm_cfg (timm's pretrained_cfg), tv_backend
(transformers' torchvision processors), fast (the served path's choice, a photo made smaller to send).
"""

from vitexport.preprocess.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    INTERPOLATIONS,
    PreprocessConfig,
)
from vitexport.preprocess.decode import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_PIXELS,
    MAX_RESIZED_PIXELS,
    REDUCE_GAP,
)
from vitexport.preprocess.fast import (
    ServedPreprocessing,
    reduce_for_sending,
    reduced_decode_size,
    resize_target,
)
from vitexport.preprocess.hf import from_hf_processor
from vitexport.preprocess.limits import RequestLimits, check_request
from vitexport.preprocess.timm_cfg import from_timm_cfg
from vitexport.preprocess.transform import (
    DetectionInput,
    detection_size,
    load_images,
    preprocess_detection,
    preprocess_image,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "INTERPOLATIONS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_PIXELS",
    "MAX_RESIZED_PIXELS",
    "REDUCE_GAP",
    "DetectionInput",
    "PreprocessConfig",
    "RequestLimits",
    "ServedPreprocessing",
    "check_request",
    "detection_size",
    "from_hf_processor",
    "from_timm_cfg",
    "load_images",
    "preprocess_detection",
    "preprocess_image",
    "reduce_for_sending",
    "reduced_decode_size",
    "resize_target",
]
