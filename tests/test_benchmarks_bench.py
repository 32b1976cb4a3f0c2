"""`vitexport bench --quick` smoke test on the tiny test models: it runs real runtimes (PyTorch, ONNX Runtime,
a real Triton with perf_analyzer) and writes valid JSON, Markdown and PNG reports. Speed is measured, never
asserted: the checks are on the reports' structure only."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import VitExportError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


PHOTO, SMALL = "640x480.png", "320x240.jpg"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # What `deploy` chose for test_vit (one candidate, gated on photographs): --quick measures it beside the peers,
    # in-process and served; test_resnet, not deployed, gets the fp32 variant, ungated.
    repo = out / "repo"
    deploy = ["deploy", "test_vit", "--runtimes", "onnxruntime-fp32", "--repo", str(repo), "--workdir", str(out / "d")]
    deployed = CliRunner().invoke(app, deploy)
    assert deployed.exit_code == 0, deployed.output
    args = [
        "bench",
        "test_vit",
        "test_resnet",
        "--quick",
        "--backends",
        "torch,onnxruntime-plain,triton-grpc,triton-image",
        "--concurrency",
        "1,2",
        "--photos",
        f"{PHOTO},{SMALL}",
        # Matmuls far too small to reach the machine's peak: the rows outrun them, and the peak must follow the rows.
        "--gemm-sizes",
        "16,32",
        "--repo",
        str(repo),
        "--output",
        str(out / "results"),
        "--workdir",
        str(out / "work"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "results", result.output, repo


def test_quick_writes_valid_json(quick_run):
    results, _, repo = quick_run
    data = json.loads((results / "bench-quick.json").read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["versions"]["onnxruntime"]
    assert set(data["load_average"]) == {"start", "end", "max"}
    assert data["settings"]["batch_sizes"] == [1, 8] and data["settings"]["gemm_sizes"] == [16, 32]
    # Every GEMM peak that ran has a positive rate, and fp32 has a peak to compare the models with.
    assert "fp32" in data["peak_gflops"]
    # INT8 is measured on the kernels the INT8 variants run: OpenVINO turned the Q/DQ MatMul into an int8 one.
    assert data["peaks"]["openvino-int8"]["precision"] == "int8" and data["peak_gflops"]["int8"] > 0
    for name in ("test_vit", "test_resnet"):
        model = data["models"][name]
        assert model["gflop_per_image"] > 0
        for backend in ("torch", "onnxruntime-plain"):
            entry = model["in_process"][backend]
            assert entry["status"] == "ok", entry
            assert entry["peer"] is True
            for bs in ("1", "8"):
                point = entry["batches"][bs]
                assert len(point["windows"]) == 3
                assert point["img_s_min"] <= point["img_s"] <= point["img_s_max"]
                assert point["gflops"] > 0 and point["fraction_of_peak"] > 0
        served = model["served"]["triton-grpc"]
        assert set(served) == {"1", "2"}
        for point in served.values():
            assert point["img_s"] > 0
            assert point["latency_ms_p50"] <= point["latency_ms_p99"]
    # test_vit: deploy's file, measured in-process as our (gated) row and served.
    vit = data["models"]["test_vit"]
    ours = vit["in_process"]["onnxruntime"]
    assert ours["deployed"] == f"{repo}/test_vit/1" and ours["gated"] and ours["artifact"] == "model.onnx"
    variant = vit["served"]["triton-grpc"]["1"]["variant"]
    assert (variant["backend"], variant["gated"]) == ("onnxruntime", True) and "deploy wrote" in variant["chosen"]
    vit_lines = [line for line in data["verdicts"] if line.lstrip("*").startswith("test_vit, batch 8")]
    assert vit_lines and "our best gated path" in vit_lines[0] and "no gated path" not in vit_lines[0]
    # test_resnet: not deployed, and --quick gates nothing, so the fp32 ONNX Runtime variant, and the row says so.
    variant = data["models"]["test_resnet"]["served"]["triton-grpc"]["1"]["variant"]
    assert (variant["runtime"], variant["precision"], variant["gated"]) == ("onnxruntime", "fp32", False)
    assert variant["artifact"].endswith(".onnx") and "no gated variant" in variant["chosen"]
    assert "onnxruntime" not in data["models"]["test_resnet"]["in_process"]
    assert any("test_resnet, batch 8: no gated path was measured" in line for line in data["verdicts"])


def test_no_row_is_over_its_peak(quick_run):
    """Measured rows against measured GEMMs too small to reach the machine's peak: the fp32 peak is then a row's own
    best window, and no row, in the JSON or the Markdown, is over 100% of its precision's peak."""
    results, _, _ = quick_run
    data = json.loads((results / "bench-quick.json").read_text())
    assert data["peak_sources"]["fp32"]["source"].startswith("row "), data["peak_sources"]
    gemm = data["peaks"]["onnxruntime-fp32"]
    assert gemm["rounds"] == 3 and set(gemm["sizes"]) == {"16", "32"}  # before the models and after each
    assert gemm["gflops_min"] <= gemm["gflops_median"] <= gemm["gflops"] < data["peak_gflops"]["fp32"]
    fractions = [
        point["fraction_of_peak"]
        for model in data["models"].values()
        for entry in model["in_process"].values()
        for point in entry["batches"].values()
    ]
    assert fractions and max(fractions) <= 1.0
    table = (results / "bench-quick.md").read_text().split("## Throughput in-process")[1].split("\n## ")[0]
    cells = [line.rstrip(" |").rsplit("| ", 1)[1] for line in table.splitlines() if line.startswith("| test_")]
    assert cells and max(float(c.rstrip("%")) for c in cells) <= 100, cells


def test_quick_measures_the_image_path_beside_the_tensor_path(quick_run):
    results, _, _ = quick_run
    data = json.loads((results / "bench-quick.json").read_text())
    for name in ("test_vit", "test_resnet"):
        image = data["models"][name]["image_path"]
        assert [(r["photo"], r["concurrency"]) for r in image["rows"]] == [
            (p, c) for c in (1, 8) for p in (PHOTO, SMALL)
        ]
        # The tensor path just before and just after each photograph: each row's reference is its two neighbours.
        points = image["points"]
        assert [p["path"] for p in points] == ["tensor", PHOTO, "tensor", SMALL, "tensor"] * 2
        neighbours = [[points[i - 1]["img_s"], points[i + 1]["img_s"]] for i in (1, 3, 6, 8)]
        assert [r["tensor_img_s_runs"] for r in image["rows"]] == neighbours
        for r in image["rows"]:
            assert r["img_s"] > 0 and r["ratio"] == pytest.approx(r["img_s"] / r["tensor_img_s"], abs=1e-3)
            assert r["latency_ms_p50"] <= r["latency_ms_p99"]
            size = data["models"][name]["resolution"]
            assert r["tensor_request_bytes"] == 3 * size * size * 4 and r["request_bytes"] > 5_000
            where = r["where"]
            # Triton's statistics: the photograph was decoded by the preprocessing, then the model ran.
            assert where["preprocess_ms"] > 0 and where["model_ms"] > 0 and where["model_mean_batch"] >= 1
            assert where["server_ms"] >= where["preprocess_ms"] and where["transfer_ms"] > 0
        tensor = image["points"][0]["server"]
        assert set(tensor) == {"classifier"}  # the tensor path reached the model alone
    vit = data["models"]["test_vit"]["image_path"]
    assert vit["variant"]["gated"] and "deploy wrote" in vit["variant"]["chosen"]


def test_quick_writes_markdown_and_pngs(quick_run):
    results, output, _ = quick_run
    md = (results / "bench-quick.md").read_text()
    assert "| model | backend | kind | precision | batch 1 | batch 8 |" in md
    assert "## The DeiT paper's throughput table" in md
    assert "| test_vit | onnxruntime fp32 | triton-grpc | 2 |" in md  # deploy's, gated
    assert "| test_resnet | onnxruntime fp32 (ungated) | triton-grpc | 2 |" in md
    assert f"| test_vit | onnxruntime fp32 | {PHOTO} |" in md
    for png in ("bench-quick_throughput.png", "bench-quick_latency.png", "bench-quick_image_path.png"):
        assert f"]({png})" in md
        data = (results / png).read_bytes()
        assert data.startswith(PNG_MAGIC)
        import matplotlib.image

        assert matplotlib.image.imread(results / png).shape[0] > 100
    assert str(results / "bench-quick.json") in output


def test_an_unwritable_output_is_refused_before_measuring(tmp_path):
    """The check comes first: a traceback after the run lost its results."""
    (tmp_path / "file").write_text("")
    for option in ("--output", "--workdir"):
        args = ["bench", "test_vit", "--quick", "--output", str(tmp_path), "--workdir", str(tmp_path)]
        args[args.index(option) + 1] = str(tmp_path / "file" / "results")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "Not a directory" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "bench-quick.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_model"], "unknown model 'no_such_model'"),
        (["test_vit", "--backends", "torch,cuda"], "--backends must be among"),
        (["test_vit", "--batch-sizes", "0,8"], "--batch-sizes takes positive integers"),
        (["test_vit", "--concurrency", "one"], "--concurrency takes comma-separated integers"),
        (["test_vit", "--triton-url", "localhost:8000"], "--triton-url takes HOST:HTTP_PORT:GRPC_PORT"),
        (["test_vit", "--photos", "640x480.gif"], "a photograph is WIDTHxHEIGHT.jpg or .png"),
        (["test_vit", "--gemm-sizes", "0"], "--gemm-sizes takes positive integers"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, ["bench", *args, "--output", str(tmp_path), "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def _row(img_s: dict[str, float], gated: bool = True, precision: str = "int8") -> dict:
    batches = {bs: {"img_s": rate} for bs, rate in img_s.items()}
    return {"status": "ok", "gated": gated, "peer": False, "precision": precision, "batches": batches}


def test_served_variant_is_what_deploy_would_choose(tmp_path):
    from vitexport.bench.runners import BenchBackend as B
    from vitexport.bench.served_rows import beside_in_process as _beside_in_process
    from vitexport.bench.served_rows import served_variant as _served_variant

    paths = {b: tmp_path / f"{b.value}.onnx" for b in (B.onnxruntime, B.onnxruntime_int8, B.openvino_int8)}
    paths[B.triton_grpc] = paths[B.onnxruntime]
    entries = {
        "onnxruntime": _row({"1": 9.0, "8": 10.0}, precision="fp32"),
        # The fastest at batch 1 but not at batch 8, where deploy times its candidates.
        "onnxruntime-int8": _row({"1": 30.0, "8": 20.0}),
        "openvino-int8": _row({"1": 20.0, "8": 25.0}),
        # Faster still, but a peer, and an ungated variant: neither is served.
        "openvino-plain": {**_row({"8": 50.0}, precision="fp32"), "peer": True},
        "openvino-bf16": _row({"8": 40.0}, gated=False, precision="bf16"),
    }
    variant = _served_variant(entries, paths, [B.triton_grpc])
    assert (variant["backend"], variant["runtime"], variant["precision"]) == ("openvino-int8", "openvino", "int8")
    assert variant["gated"] and "25 img/s at batch 8" in variant["chosen"]

    served = {"triton-grpc": {"1": {"img_s": 18.0, "variant": variant}, "4": {"img_s": 24.0, "variant": variant}}}
    _beside_in_process(served, entries)
    assert served["triton-grpc"]["1"]["served_over_in_process"] == 0.9  # 18 / 20, the same variant at batch 1
    assert "in_process_img_s" not in served["triton-grpc"]["4"]  # batch 4 was not measured in-process

    # Nothing gated: the fp32 ONNX Runtime variant the served backends were prepared with, labelled ungated.
    ungated = {k: {**e, "gated": False} for k, e in entries.items()}
    fallback = _served_variant(ungated, paths, [B.triton_grpc])
    assert (fallback["backend"], fallback["gated"]) == ("onnxruntime", False)
    assert "no gated variant" in fallback["chosen"]


@pytest.mark.integration  # the bench harness over five runtimes
def test_a_detector_is_measured_with_its_mask_beside_its_own_reference_peers(tmp_path):
    """DETR's rows: the runtimes feed its mask (a full canvas), timm (no detectors) gets no row, and transformers
    (the detectors' reference) is recorded as skipped for the tiny test config, which it has no equivalent of."""
    args = ["bench", "test_detr", "--quick", "--no-gemm", "--batch-sizes", "2", "--output", str(tmp_path / "r")]
    args += ["--backends", "torch,timm,transformers,onnxruntime-plain,openvino-plain", "--workdir", str(tmp_path / "w")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = json.loads((tmp_path / "r" / "bench-quick.json").read_text())["models"]["test_detr"]
    assert model["task"] == "detection" and model["gflop_per_image"] > 0
    assert set(model["in_process"]) == {"torch", "transformers", "onnxruntime-plain", "openvino-plain"}
    for backend in ("torch", "onnxruntime-plain", "openvino-plain"):
        assert model["in_process"][backend]["status"] == "ok", model["in_process"][backend]
        assert set(model["in_process"][backend]["batches"]) == {"2"}
    skipped = model["in_process"]["transformers"]
    assert skipped["status"] == "skipped" and "no transformers DETR equivalent" in skipped["reason"]


def test_photographs_are_made_at_the_asked_size_and_format(tmp_path):
    import io

    from PIL import Image

    from vitexport.bench.image_path import Photo, parse_photos, photo_bytes

    photos = parse_photos("640x480.jpg, 320x240.png,640x480.jpg")
    assert photos == (Photo(640, 480, "jpg"), Photo(320, 240, "png"))  # each once, in order
    for photo, fmt in zip(photos, ("JPEG", "PNG"), strict=True):
        data = photo_bytes(photo, tmp_path)
        image = Image.open(io.BytesIO(data))
        assert (image.size, image.format) == ((photo.width, photo.height), fmt)
        assert photo_bytes(photo, tmp_path) == data  # made once, then read back
    with pytest.raises(VitExportError, match="WIDTHxHEIGHT"):
        parse_photos("4032x3024.heic")


def test_triton_statistics_become_milliseconds_per_request():
    from vitexport.bench.triton_stats import per_request

    zero = dict.fromkeys(("requests", "inferences", "executions", "success_ns"), 0) | {
        f"{s}_ns": 0 for s in ("queue", "compute_input", "compute_infer", "compute_output")
    }
    before = {"m": zero, "idle": zero}
    after = {
        # 8 requests in 4 batches of 2; a batch's compute counts once for each of its requests, as Triton reports it.
        "m": zero | {"requests": 8, "inferences": 8, "executions": 4, "success_ns": 80_000_000},
        "idle": zero,
    }
    after["m"] |= {"queue_ns": 8_000_000, "compute_infer_ns": 64_000_000}
    rows = per_request(before, after)
    assert set(rows) == {"m"}  # a model that ran no request between the readings is left out
    assert rows["m"]["mean_batch"] == 2 and rows["m"]["server_ms"] == 10 and rows["m"]["queue_ms"] == 1
    assert rows["m"]["compute_infer_ms"] == 8


def test_the_deployed_variant_is_found_by_its_sidecar_only(tmp_path):
    from vitexport.bench.deployed import find_deployed

    assert find_deployed(tmp_path / "missing", "test_vit") is None
    (tmp_path / "test_vit" / "1").mkdir(parents=True)
    (tmp_path / "test_vit" / "config.pbtxt").write_text("")
    assert find_deployed(tmp_path, "test_vit") is None  # a version folder without a model file and its sidecar


def test_the_image_path_serves_the_preprocessing_repo_would(tiny):
    """`--preprocess exact` is the reference, ungated; unsaid, the fast path where its gate passes on this model (the
    choice `repo` and `deploy` make), its figures recorded."""
    from vitexport.bench.image_path import ImagePathSettings, repository_options

    exact = repository_options(ImagePathSettings(preprocess="exact"), None)["preprocessing"]
    assert not exact.fast and exact.gate is None
    chosen = repository_options(ImagePathSettings(), tiny("test_vit").onnx)["preprocessing"]
    assert chosen.gate is not None and "fast" in chosen.gate
