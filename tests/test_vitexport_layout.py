"""The layout rules of docs/architecture.md that a tool can check: one name in site-packages, a thin CLI. (The import
rule is checked by import-linter's contracts in pyproject.toml, run by scripts/test.sh.)"""

from __future__ import annotations

import ast
import os
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
    # The version is written once, in vitexport/__init__.py; the wheel's metadata reads it from there.
    import vitexport

    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert f"\nVersion: {vitexport.__version__}\n" in zipfile.ZipFile(wheel).read(metadata).decode()
    assert wheel.name.startswith(f"vitexport-{vitexport.__version__}-")


def test_no_cli_module_is_over_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "vitexport" / "cli").glob("*.py")}
    assert sizes and max(sizes.values()) <= 300, sizes


# -- short functions, short files (issue 20) ---------------------------------------------------------------------------

MAX_FUNCTION_LINES = 60  # from `def` to the last line, signature included
MAX_FILE_LINES = 400

# No exceptions: every function is at most MAX_FUNCTION_LINES, every file at most MAX_FILE_LINES (issue 20 emptied the
# lists of those still being split). An entry here must say why it cannot be split.
TOO_LONG: set[str] = set()
TOO_BIG: set[str] = set()


def _package_files() -> dict[str, Path]:
    """The installed package's Python files (packages: folders with an __init__.py, through the stage symlinks, so not
    benchmarks/scripts/), by their path in the checkout."""
    files = {}
    for folder, subfolders, names in os.walk(ROOT / "vitexport", followlinks=True):
        subfolders[:] = [s for s in subfolders if s != "__pycache__"]
        if "__init__.py" in names:
            for name in names:
                if name.endswith(".py"):
                    path = (Path(folder) / name).resolve()
                    files[path.relative_to(ROOT).as_posix()] = path
    return files


def _function_lengths() -> dict[str, int]:
    """Every function and method of the package: "file:qualified name" -> lines."""
    lengths = {}

    def visit(node: ast.AST, prefix: str, file: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[f"{file}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.", file)
            else:
                visit(child, prefix, file)

    for file, path in _package_files().items():
        visit(ast.parse(path.read_text(), str(path)), "", file)
    return lengths


def test_the_walk_sees_the_whole_package():
    files = _package_files()
    for file in (
        "vitexport/cli/bench.py",
        "export/tensorrt/build.py",
        "serving/backends/__init__.py",
        "benchmarks/soak.py",
    ):
        assert file in files
    assert not [f for f in files if f.startswith("benchmarks/scripts/")]
    assert _function_lengths()["serving/server.py:TritonServer.check_backends"] > 1


def test_no_function_is_over_60_lines():
    lengths = _function_lengths()
    too_long = {name: n for name, n in sorted(lengths.items()) if n > MAX_FUNCTION_LINES and name not in TOO_LONG}
    assert not too_long, f"split these functions (at most {MAX_FUNCTION_LINES} lines): {too_long}"
    now_short = {name: lengths.get(name) for name in TOO_LONG if lengths.get(name, 0) <= MAX_FUNCTION_LINES}
    assert not now_short, f"short now (or gone): remove them from TOO_LONG: {now_short}"


def test_no_file_is_over_400_lines():
    sizes = {file: len(path.read_text().splitlines()) for file, path in _package_files().items()}
    too_big = {file: n for file, n in sorted(sizes.items()) if n > MAX_FILE_LINES and file not in TOO_BIG}
    assert not too_big, f"split these files by job (at most {MAX_FILE_LINES} lines): {too_big}"
    now_small = {file: sizes.get(file) for file in TOO_BIG if sizes.get(file, 0) <= MAX_FILE_LINES}
    assert not now_small, f"small now (or gone): remove them from TOO_BIG: {now_small}"
