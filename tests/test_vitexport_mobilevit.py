"""MobileViT beyond the family contract (tests/test_families_contract.py: parity at 64 px, export, fusion): parity
with timm and Hugging Face transformers where maps are resized to whole patches (every parameter and batch-norm
statistic perturbed), the full-size xxs, the Hub checkpoint layout, sizes, pooling and preprocessing."""

import pytest
import torch
from _parity import PARITY_ATOL, max_diff, perturbed
from _references import hf_mobilevit, timm_mobilevit
from torch.utils.flop_counter import FlopCounterMode

from vitexport.errors import CheckpointError
from vitexport.models import create_model, get_spec
from vitexport.weights import load_state_dict


def test_parity_with_timm_at_80_px(timm):
    img_size = 80  # the last 5x5 map is resized to whole patches
    reference = timm_mobilevit(timm, img_size)
    ours = create_model("test_mobilevit", img_size=img_size)
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("test_mobilevit").checkpoint_filter)
    assert max_diff(ours, reference, img_size) <= PARITY_ATOL


def test_parity_with_timm_mobilevit_xxs(timm):
    reference = perturbed(timm.create_model("mobilevit_xxs"))
    ours = create_model("mobilevit_xxs")
    load_state_dict(ours, reference.state_dict(), "timm", get_spec("mobilevit_xxs").checkpoint_filter)
    assert max_diff(ours, reference, 256, batch=1) <= PARITY_ATOL


def test_parity_with_hugging_face_at_80_px(transformers):
    img_size = 80
    reference = hf_mobilevit(transformers, img_size)
    ours = create_model("test_mobilevit", img_size=img_size)
    load_state_dict(ours, reference.state_dict(), "transformers", get_spec("test_mobilevit").checkpoint_filter)
    assert max_diff(ours, lambda x: reference(pixel_values=x).logits, img_size) <= PARITY_ATOL


def test_hub_checkpoint_in_a_safetensors_file(tmp_path, transformers):
    from safetensors.torch import save_file

    reference = hf_mobilevit(transformers)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    loaded = create_model("test_mobilevit", checkpoint=str(path))
    assert max_diff(loaded, lambda x: reference(pixel_values=x).logits, 64) <= PARITY_ATOL


def test_hugging_face_checkpoint_without_a_key_projection(transformers):
    sd = {
        k: v for k, v in hf_mobilevit(transformers).state_dict().items() if "layer.0.attention.attention.key" not in k
    }
    with pytest.raises(CheckpointError, match=r"stages\.2\.1\.transformer\.0 has only \['q', 'v'\]"):
        load_state_dict(
            create_model("test_mobilevit"), sd, "transformers", get_spec("test_mobilevit").checkpoint_filter
        )


@pytest.mark.parametrize(("name", "params_m"), [("mobilevit_xxs", 1.3), ("mobilevit_xs", 2.3), ("mobilevit_s", 5.6)])
def test_published_sizes(name, params_m):
    assert round(get_spec(name).num_params / 1e6, 1) == params_m  # as the MobileViT paper reports them


def test_macs_where_maps_are_resized_to_whole_patches():
    spec = get_spec("test_mobilevit").with_img_size(80)
    with torch.device("meta"):
        model = spec.build()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(1, 3, 80, 80, device="meta"))
    assert counter.get_total_flops() == 2 * spec.macs()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


def test_pooled_features_are_what_the_classifier_sees():
    model = create_model("test_mobilevit")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        head_of_pooled = model.head.fc(pooled)
        logits = model(x)
    assert features.shape == (2, model.num_features, 2, 2)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    torch.testing.assert_close(head_of_pooled, logits)


def test_preprocessing_follows_the_cvnets_checkpoints():
    pre = get_spec("mobilevit_s").preprocess
    assert (pre.input_size, pre.mean, pre.std, pre.crop_pct, pre.interpolation) == (
        256,
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        0.9,
        "bicubic",
    )
    assert get_spec("mobilevit_s").hub_id == "mobilevit_s.cvnets_in1k"
