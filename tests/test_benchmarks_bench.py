"""`vitexport bench --quick` smoke test on the tiny test models: it runs real runtimes (PyTorch, ONNX Runtime,
a real Triton with perf_analyzer) and writes valid JSON, Markdown and PNG reports. Speed is measured, never
asserted: the checks are on the reports' structure only."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vitexport.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = [
        "bench",
        "test_vit",
        "test_resnet",
        "--quick",
        "--backends",
        "torch,onnxruntime-plain,triton-grpc",
        "--concurrency",
        "1,2",
        "--output",
        str(out / "results"),
        "--workdir",
        str(out / "work"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "results", result.output


def test_quick_writes_valid_json(quick_run):
    results, _ = quick_run
    data = json.loads((results / "bench-quick.json").read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["versions"]["onnxruntime"]
    assert set(data["load_average"]) == {"start", "end", "max"}
    assert data["settings"]["batch_sizes"] == [1, 8]
    # Every GEMM peak that ran has a positive rate, and fp32 has a peak to compare the models with.
    assert "fp32" in data["peak_gflops"]
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
    # No gated path was asked for, and the report says so instead of inventing a comparison.
    assert any("no gated path was measured" in line for line in data["verdicts"])


def test_quick_writes_markdown_and_pngs(quick_run):
    results, output = quick_run
    md = (results / "bench-quick.md").read_text()
    assert "| model | backend | kind | precision | batch 1 | batch 8 |" in md
    assert "## The DeiT paper's throughput table" in md
    assert "| test_vit | triton-grpc | 2 |" in md
    for png in ("bench-quick_throughput.png", "bench-quick_latency.png"):
        assert f"]({png})" in md
        data = (results / png).read_bytes()
        assert data.startswith(PNG_MAGIC)
        import matplotlib.image

        assert matplotlib.image.imread(results / png).shape[0] > 100
    assert str(results / "bench-quick.json") in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_model"], "unknown model 'no_such_model'"),
        (["test_vit", "--backends", "torch,cuda"], "--backends must be among"),
        (["test_vit", "--batch-sizes", "0,8"], "--batch-sizes takes positive integers"),
        (["test_vit", "--concurrency", "one"], "--concurrency takes comma-separated integers"),
        (["test_vit", "--triton-url", "localhost:8000"], "--triton-url takes HOST:HTTP_PORT:GRPC_PORT"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, ["bench", *args, "--output", str(tmp_path), "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
