"""The report's judgements on a hand-written result: which path counts as our best gated one, when a peer is said
to beat it, and the DeiT-paper table's ratios. The figures are inputs here, not measurements being asserted."""

from __future__ import annotations

from vitexport.bench.report import markdown, paper_table, verdicts


def _entry(rate: float, *, peer: bool, gated: bool = True) -> dict:
    point = {"img_s": rate, "spread": 0.05, "latency_ms_p50": 1000 / rate, "gflops": rate, "fraction_of_peak": 0.5}
    return {"status": "ok", "peer": peer, "gated": gated and not peer, "precision": "fp32", "batches": {"8": point}}


def _result(models: dict[str, dict]) -> dict:
    result = {
        "command": "vitexport bench ...",
        "machine": {
            "date": "today",
            "cpu": "cpu",
            "cores": 2,
            "isa": ["avx2"],
            "memory_gb": 8,
            "versions": {"torch": "2.13.0"},
        },
        "settings": {"batch_sizes": [8], "threads": 2, "windows": 3, "duration": 2.0, "warmup": 1.0, "validate": True},
        "load_average": {"start": 0.1, "end": 0.2, "max": 0.2},
        "peaks": {},
        "peak_gflops": {},
        "models": {
            name: {"params": 5e6, "resolution": 224, "in_process": backends, "served": {}}
            for name, backends in models.items()
        },
    }
    result["paper_table"] = paper_table(result)
    result["verdicts"] = verdicts(result)
    return result


def test_a_faster_peer_is_named_and_ungated_variants_do_not_count():
    result = _result(
        {
            "deit_tiny_patch16_224": {
                "onnxruntime": _entry(40, peer=False),
                "openvino-int8": _entry(90, peer=False, gated=False),  # faster, but failed its gate
                "timm": _entry(50, peer=True),
                "torch": _entry(30, peer=True),
            }
        }
    )
    [line] = result["verdicts"]
    assert "a peer beats our best gated path" in line
    assert "onnxruntime (40.0 img/s)" in line and "timm (50.0 img/s)" in line and "torch" not in line
    assert "ours, ungated" in markdown(result, {})


def test_ours_beating_every_peer_says_so():
    result = _result({"resnet50": {"onnxruntime": _entry(60, peer=False), "torch": _entry(20, peer=True)}})
    assert result["verdicts"] == [
        "resnet50, batch 8: our best gated path onnxruntime (60.0 img/s) beats every peer "
        "(best peer torch, 20.0 img/s; x3.00)."
    ]


def test_paper_table_ratios_are_to_resnet50_and_keep_the_papers_rows():
    result = _result(
        {
            "deit_small_patch16_224": {"onnxruntime": _entry(30, peer=False)},
            "resnet50": {"onnxruntime": _entry(60, peer=False)},
        }
    )
    rows = {r["model"]: r for r in result["paper_table"]}
    assert rows["DeiT-S"]["best_ratio_to_resnet50"] == 0.5
    assert rows["DeiT-S"]["same_backend"] == "onnxruntime"
    assert rows["DeiT-S"]["paper_v100_img_s"] == 940
    assert rows["DeiT-S"]["paper_ratio_to_resnet50"] == round(940 / 1226, 3)
    assert rows["ResNet-152"]["measured"] is False  # not run, still in the table
    assert "| ResNet-152 | | | not in this run |" in markdown(result, {})
