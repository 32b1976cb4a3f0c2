#!/usr/bin/env bash
# Create .venv and install vitexport with everything its tests and main job use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel on these machines; anything else pulls a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[dev,serve,cpu-opt,bench]" "torch==2.13.0"
# Test-time references. timm's and transformers' layers import torchvision; its only torch-2.13 wheel is a CUDA
# build, whose Python side works once tests/conftest.py declares two op schemas. --no-deps keeps CPU torch.
pip install --no-deps "torchvision==0.28.0" "timm>=1.0,<2"
# Optimum (what most Hugging Face users export with) for the import tests: optimum-onnx 0.1 needs transformers < 4.58,
# the venv's is 5.x, so it lives in its own folder and runs in a subprocess (tests/test_serving_hugging_face.py).
[ -f .optimum/optimum_onnx-0.1.0.dist-info/METADATA ] || pip install --target .optimum --no-deps --upgrade \
    "optimum==2.1.0" "optimum-onnx==0.1.0" "transformers==4.57.6" "huggingface_hub==0.36.2" "tokenizers==0.22.1" \
    "requests==2.32.5" "charset_normalizer==3.5.3"
# tritonclient's perf_analyzer, on the venv's PATH, starting as is (it needs two libraries by names no wheel gives them).
bash scripts/perf_analyzer.sh .venv
