"""The report's judgements on a hand-written result: which path counts as our best gated one, when a peer is said
to beat it, and the DeiT-paper table's ratios. The figures are inputs here, not measurements being asserted."""

from __future__ import annotations

from vitexport.bench.report import detr_table, markdown, paper_table, swin_table, swin_table_notes, verdicts


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
    assert rows["DeiT-S"]["paper_ratio_to_resnet50"] == round(940 / 1226, 4)
    assert rows["ResNet-152"]["measured"] is False  # not run, still in the table
    assert "| ResNet-152 | | | not in this run |" in markdown(result, {})


def test_swin_table_ratios_are_to_deit_s_from_the_same_run():
    result = _result(
        {
            "swin_tiny_patch4_window7_224": {"onnxruntime": _entry(20, peer=False), "torch": _entry(25, peer=True)},
            "deit_small_patch16_224": {
                "onnxruntime": _entry(40, peer=False),
                "onnxruntime-int8": _entry(80, peer=False),
            },
            "resnet50": {"onnxruntime": _entry(60, peer=False)},  # not in the Swin paper's table: no row
        }
    )
    rows = {r["model"]: r for r in swin_table(result)}
    assert set(rows) == {"Swin-T", "Swin-S", "Swin-B", "DeiT-S", "DeiT-B", "Swin-B 384²", "ViT-B/16 384²"}
    swin_t, deit_s = rows["Swin-T"], rows["DeiT-S"]
    # One runtime for every model: onnxruntime at batch 8, the run's largest batch size.
    assert swin_t["same_backend"] == "onnxruntime" and swin_t["batch_size"] == 8
    assert swin_t["same_backend_ratio_to_deit_s"] == 0.5
    # Best gated paths: Swin-T's onnxruntime (the torch peer does not count) over DeiT-S's onnxruntime-int8.
    assert swin_t["best_backend"] == "onnxruntime" and deit_s["best_backend"] == "onnxruntime-int8"
    assert swin_t["best_ratio_to_deit_s"] == 0.25
    assert deit_s["same_backend_ratio_to_deit_s"] == 1.0
    assert swin_t["paper_v100_img_s"] == 755.2
    assert swin_t["paper_ratio_to_deit_s"] == round(755.2 / 940.4, 4)
    assert rows["Swin-S"]["measured"] is False and rows["Swin-S"]["paper_ratio_to_deit_s"] == round(436.9 / 940.4, 4)


def test_swin_table_markdown_has_its_columns_and_says_where_it_differs():
    result = _result(
        {
            "swin_tiny_patch4_window7_224": {"onnxruntime": _entry(32, peer=False)},
            "swin_base_patch4_window7_224": {"onnxruntime": _entry(12, peer=False)},
            "deit_small_patch16_224": {"onnxruntime": _entry(40, peer=False)},
            "deit_base_patch16_224": {"onnxruntime": _entry(30, peer=False)},
        }
    )
    md = markdown(result, {})
    assert "## The Swin paper's throughput table (Table 1(a)), measured here (batch 8, 2 CPU threads)" in md
    assert (
        "| model | params | image size | img/s, best gated path | ratio to DeiT-S | img/s, onnxruntime | ratio "
        "| paper V100 img/s | paper ratio |"
    ) in md
    assert "| Swin-S | | | not in this run | | | | 436.9 | 0.46 |" in md
    notes = swin_table_notes(swin_table(result))
    # Swin-T: 0.80 here, 0.80 on the V100; Swin-B: 0.30 here against the paper's 0.30.
    assert notes[0].startswith("Swin-T: onnxruntime 0.80 vs paper 0.80, as on the V100")
    assert "Swin-B: onnxruntime 0.30 vs paper 0.30, as on the V100" in notes[1]
    # DeiT-B: 0.75 of DeiT-S here, 0.31 on the V100: said plainly.
    assert "DeiT-B: onnxruntime 0.75 vs paper 0.31, faster relative to DeiT-S than on the V100 (+141%)" in notes[2]
    assert "- " + notes[2] in md
    alone = _result({"swin_tiny_patch4_window7_224": {"onnxruntime": _entry(32, peer=False)}})
    # No DeiT-S in the run: no ratio is made up, and the sentence says so.
    assert swin_table(alone)[0]["same_backend_ratio_to_deit_s"] is None
    assert swin_table_notes(swin_table(alone)) == [
        "Swin-T: onnxruntime: no ratio measured; best gated: no ratio measured."
    ]


def test_runs_without_any_swin_table_model_have_no_swin_section():
    result = _result({"resnet50": {"onnxruntime": _entry(60, peer=False)}})
    assert "Swin paper" not in markdown(result, {})


def _detr_entry(rate: float, *, peer: bool) -> dict:
    entry = _entry(rate, peer=peer)
    entry["batches"] = {"1": entry["batches"]["8"]}
    return entry


def test_detr_table_is_at_batch_1_with_ratios_to_detr_r50_and_no_deit_rows():
    result = _result(
        {
            "detr_resnet50": {"onnxruntime": _detr_entry(0.5, peer=False), "torch": _detr_entry(0.4, peer=True)},
            "detr_resnet101": {"onnxruntime": _detr_entry(0.3, peer=False), "torch": _detr_entry(0.25, peer=True)},
        }
    )
    for name, gflop in (("detr_resnet50", 120.4), ("detr_resnet101", 215.0)):
        result["models"][name] |= {"task": "detection", "gflop_per_image": gflop}
    result["paper_table"] = paper_table(result)
    rows = {r["model"]: r for r in detr_table(result)}
    r101 = rows["DETR-R101"]
    assert r101["batch_size"] == 1 and r101["best_ratio_to_detr_r50"] == 0.6
    assert (r101["same_backend"], r101["same_backend_ratio_to_detr_r50"]) == ("onnxruntime", 0.6)
    assert r101["paper_ratio_to_detr_r50"] == round(20 / 28, 4)
    assert (r101["paper_gflops"], r101["gflop_per_image"]) == (152, 215.0)
    assert rows["Faster RCNN-FPN R50"]["measured"] is False  # the paper's row, kept so the table keeps its form
    # The DeiT table is for classifiers: a run of detectors measures none of its rows and shows no DeiT section.
    assert all(r.get("measured") is False for r in result["paper_table"])
    page = markdown(result, {})
    assert "DETR paper's Table 1" in page and "DeiT paper" not in page
    assert "| DETR-R101 | 5.0M | 224² | 0.3 (onnxruntime) | 0.60 |" in page
