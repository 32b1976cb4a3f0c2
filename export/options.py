"""The export stage's choices, importable without torch or ONNX so that the CLI's `--help` stays instant (Typer
checks every `str` Enum option against its members)."""

from __future__ import annotations

from enum import Enum

from vitexport.tasks.base import FEATURES_HEAD
from vitexport.variants import Runtime

__all__ = ["PROTOBUF_LIMIT", "Attention", "Heads", "Runtime"]

PROTOBUF_LIMIT = 2**31  # a single ONNX protobuf cannot exceed 2 GB: larger models keep weights in external data


class Heads(str, Enum):
    """What the exported ONNX returns."""

    avg = "avg"  # DeiT's test-time average of the class and distillation heads
    all = "all"  # also `logits_cls` and `logits_dist`
    # No classifier: `embeddings` (N, D), the pooled representation the classifier would see. Checkpoints without
    # a classifier (pretrained encoders) load too: vitexport.models.create_model(head="features").
    features = FEATURES_HEAD


class Attention(str, Enum):
    """How transformer blocks compute attention in the exported graph."""

    sdpa = "sdpa"  # F.scaled_dot_product_attention: the standard ONNX Attention op at opset 23
    explicit = "explicit"  # MatMul -> Softmax -> MatMul, scale on Q first: what older TensorRT parsers fuse
