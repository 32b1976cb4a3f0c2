"""Every registered family in `vitexport bench`: a --quick run over their tiny test configs (real runtimes, speed
never asserted), and the timm peer's mapping (timm's model of the same name, MAE's under timm's ViT name, the
tiny configs skipped with the reason recorded in the result)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitexport.cli import app

# The two families whose graphs are furthest from ViT's (windows and shifts; convolutions around attention): BEiT and
# MAE run through the same ViT-shaped paths, and the timm names of every family are checked below.
FAMILIES = {"test_swin": "swin", "test_mobilevit": "mobilevit"}


@pytest.fixture(scope="module")
def quick_families(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-families")
    args = ["bench", *FAMILIES, "--quick", "--backends", "torch,timm,onnxruntime-plain,onnxruntime", "--no-gemm"]
    args += ["--batch-sizes", "2", "--windows", "1", "--output", str(out / "results"), "--workdir", str(out / "work")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "results" / "bench-quick.json").read_text()), (out / "results" / "bench-quick.md")


def test_every_family_runs_with_ours_and_the_peers(quick_families):
    data, _ = quick_families
    assert list(data["models"]) == list(FAMILIES)
    for name, family in FAMILIES.items():
        model = data["models"][name]
        assert model["family"] == family and model["gflop_per_image"] > 0
        for backend in ("torch", "onnxruntime-plain", "onnxruntime"):
            entry = model["in_process"][backend]
            assert entry["status"] == "ok", (name, backend, entry)
            assert entry["batches"]["2"]["img_s"] > 0
        # Made without validation (--quick): measured, but not called gated.
        assert model["in_process"]["onnxruntime"]["gated"] is False
        timm = model["in_process"]["timm"]
        assert timm["status"] == "skipped" and "tiny test config" in timm["reason"], timm


def test_the_report_lists_the_skipped_peer_with_its_reason(quick_families):
    _, md = quick_families
    text = md.read_text()
    assert (
        "| test_mobilevit | timm | test_mobilevit is a tiny test config; timm has no model of its architecture |"
        in text
    )
    assert "| test_swin | onnxruntime | ours, ungated | fp32 |" in text


@pytest.mark.parametrize(
    ("model", "timm_name", "kwargs"),
    [
        ("swin_tiny", "swin_tiny_patch4_window7_224", {}),
        ("swin_base_384", "swin_base_patch4_window12_384", {}),
        ("beit_base_patch16_224", "beit_base_patch16_224", {}),
        ("mobilevit_xxs", "mobilevit_xxs", {}),
        # timm has no mae_vit_* names: MAE's fine-tuned classifier is timm's ViT with the mean of the patch tokens.
        ("mae_vit_base", "vit_base_patch16_224", {"global_pool": "avg"}),
        ("mae_vit_huge", "vit_huge_patch14_224", {"global_pool": "avg"}),
    ],
)
def test_timm_equivalent_names(model, timm_name, kwargs):
    from vitexport.bench.runners import timm_equivalent

    assert timm_equivalent(model) == (timm_name, kwargs)


def test_timm_has_no_equivalent_of_the_tiny_configs():
    from vitexport.bench.runners import timm_equivalent
    from vitexport.errors import VitExportError

    with pytest.raises(VitExportError, match="tiny test config"):
        timm_equivalent("test_mae")


def test_the_mae_peer_computes_what_ours_does():
    """timm's vit_base_patch16_224(global_pool="avg") with our MAE model's weights gives our logits: the peer is
    the same network, not merely one of the same name."""
    import torch

    from vitexport._timm_compat import import_timm
    from vitexport.bench.runners import timm_equivalent
    from vitexport.models import create_model

    name, kwargs = timm_equivalent("mae_vit_base")
    torch.manual_seed(0)
    ours = create_model("mae_vit_base").eval()
    peer = import_timm().create_model(name, pretrained=False, **kwargs).eval()
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        out = ours(x)
        out = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(peer(x), out, atol=1e-4, rtol=1e-4)
