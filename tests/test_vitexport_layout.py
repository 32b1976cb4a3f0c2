"""The layout rules of docs/architecture.md that a tool can check: one name in site-packages, a thin CLI. (The import
rule is checked by import-linter's contracts in pyproject.toml, run by scripts/test.sh.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_vitexport(tmp_path):
    # Built from a copy: a build in the checkout leaves build/ behind, whose stale files the next wheel would hold.
    source = tmp_path / "source"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, source)
    for folder in ("vitexport", "export", "serving", "benchmarks"):
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vitexport-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["vitexport"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"vitexport"}
    # The stages come along under the one name; results and the standalone scripts do not.
    for module in ("export/onnx.py", "serving/server.py", "serving/labels/imagenet1k.txt", "bench/runners.py"):
        assert f"vitexport/{module}" in names
    assert not [n for n in names if "/results/" in n or "/scripts/" in n]


def test_no_cli_module_is_over_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "vitexport" / "cli").glob("*.py")}
    assert sizes and max(sizes.values()) <= 300, sizes
