"""create_model(num_classes=): a new classifier for every family, as timm's `num_classes` (the checkpoint's
classifier of another shape is skipped, every other key still loads strictly)."""

from __future__ import annotations

import pytest
import torch

from vitexport.errors import CheckpointError, VitExportError
from vitexport.models import create_model, get_spec, list_models

TINY = [s.name for s in list_models(include_test=True) if s.for_tests]
CLASSES = 7  # none of the tiny models has 7 classes, so every one gets a new classifier


def _inputs(name: str) -> torch.Tensor:
    size = get_spec(name).img_size
    return torch.randn(2, 3, size, size)


def test_every_family_has_a_tiny_model():
    assert {get_spec(n).family for n in TINY} >= {"vit", "deit", "beit", "mae", "swin", "mobilevit", "resnet", "detr"}
    assert get_spec("test_deit_distilled").distilled


@pytest.mark.parametrize("name", TINY)
def test_num_classes_sets_the_classifier(name):
    model = create_model(name, num_classes=CLASSES)
    with torch.no_grad():
        out = model(_inputs(name))
    if get_spec(name).task == "detection":
        logits, boxes = out
        queries = get_spec(name).arch.num_queries
        assert logits.shape == (2, queries, CLASSES + 1)  # the last: "no object"
        assert boxes.shape == (2, queries, 4)
    else:
        assert out.shape == (2, CLASSES)
    assert not model.training


@pytest.mark.parametrize("name", TINY)
def test_a_checkpoint_with_the_original_classifier_loads_the_rest_strictly(name, tmp_path):
    original = create_model(name)
    checkpoint = tmp_path / "original.pth"
    torch.save(original.state_dict(), checkpoint)

    model = create_model(name, num_classes=CLASSES, checkpoint=str(checkpoint))
    before, after = original.state_dict(), model.state_dict()
    reshaped = {k for k in after if after[k].shape != before[k].shape}
    assert reshaped, "the classifier should have changed shape"
    for key, value in after.items():
        if key not in reshaped:
            assert torch.equal(value, before[key]), key  # the backbone is the checkpoint's
    if get_spec(name).distilled:
        assert {"head.weight", "head_dist.weight"} <= reshaped  # DeiT's two heads both get the new classes

    # Strict for everything but the classifier: a backbone key missing is still an error.
    broken = dict(original.state_dict())
    dropped = next(k for k in broken if k not in reshaped and not k.endswith("num_batches_tracked"))
    del broken[dropped]
    torch.save(broken, checkpoint)
    with pytest.raises(CheckpointError, match=f"missing {dropped}"):
        create_model(name, num_classes=CLASSES, checkpoint=str(checkpoint))


def test_a_checkpoint_fine_tuned_to_the_classes_loads_its_classifier(tmp_path):
    tuned = create_model("test_deit_distilled", num_classes=CLASSES)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)  # not what a fresh build would initialise
    checkpoint = tmp_path / "tuned.pth"
    torch.save(tuned.state_dict(), checkpoint)
    loaded = create_model("test_deit_distilled", num_classes=CLASSES, checkpoint=str(checkpoint))
    for key, value in tuned.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_checkpoint_without_a_classifier_loads_with_a_fresh_one(tmp_path):
    original = create_model("test_swin").state_dict()
    checkpoint = tmp_path / "encoder.pth"
    torch.save({k: v for k, v in original.items() if not k.startswith("head.")}, checkpoint)
    model = create_model("test_swin", num_classes=CLASSES, checkpoint=str(checkpoint))
    assert model.head.fc.out_features == CLASSES


def test_the_same_class_count_changes_nothing(tmp_path):
    spec = get_spec("test_vit_digits")
    model = create_model(spec.name, num_classes=spec.num_classes)
    assert model(_inputs(spec.name)).shape == (2, spec.num_classes)


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "10"])
def test_a_class_count_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(VitExportError, match="num_classes must be a positive integer"):
        create_model("test_vit", num_classes=bad)


def test_num_classes_and_the_features_head_exclude_each_other():
    with pytest.raises(VitExportError, match="num_classes sets the classifier"):
        create_model("test_vit", num_classes=CLASSES, head="features")
