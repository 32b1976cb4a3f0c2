#!/usr/bin/env bash
# Set up, then run the whole test suite (under 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # the import rule: pyproject.toml [tool.importlinter]
.venv/bin/mypy  # types of the core and the stages: pyproject.toml [tool.mypy] (cached in .mypy_cache: ~1 s again)
# Two workers, a test file each at a time: most of the time goes to single-threaded work (torch's exporter,
# Triton's start, subprocesses), so the 2 cores run two files side by side.
.venv/bin/pytest -n 2 --dist loadfile "$@"
