"""The soak, shortened to 20 s for CI: the script docs/reliability.md's figures come from, run as a user runs it,
against a real Triton. It asserts what happened, not how fast: every answer right, every client mistake refused
as one, the server ready with the backend processes it started."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "soak.py"


def test_a_20_second_soak_holds(tmp_path):
    command = [sys.executable, str(SCRIPT), "test_vit", "--duration", "20", "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "soak_test_vit.json").read_text())
    assert result["requests"] > 100 and result["ok"] == result["requests"]
    assert result["mismatches"] == result["errors"] == 0 and result["crashes"] == []
    kinds = {"http image", "http tensor", "grpc image", "grpc tensor"}
    assert kinds <= set(result["latency"]) and all(result["latency"][k]["ok"] > 0 for k in kinds)
    mistakes = {case: row for case, row in result["hostile"].items() if row["refused_as_client_error"] is not None}
    assert len(mistakes) >= 5 and all(row["refused_as_client_error"] for row in mistakes.values()), mistakes
    assert result["ready_at_end"] and result["stubs_unchanged"]
    assert result["memory_mb"]["max"] > 0 and result["machine"]["cpu"]
    assert (tmp_path / "soak_test_vit.png").stat().st_size > 0
    assert "The soak held." in (tmp_path / "soak_test_vit.md").read_text()
