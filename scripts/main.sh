#!/usr/bin/env bash
# Set up, then run the main job end to end: export DeiT to ONNX (checked against PyTorch), write a Triton model
# repository, start the real Triton server, classify an image over HTTP and gRPC, run a short benchmark, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p out

vitexport models --family deit
vitexport onnx deit_base --output out/deit_base.onnx
vitexport onnx deit_small --output out/deit_small.onnx
vitexport repo out/deit_small.onnx --repo model_repository --name deit_small

vitexport serve --repo model_repository --http-port 8000 --grpc-port 8001 --metrics-port 8002 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf localhost:8000/v2/health/ready >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "triton exited before it was ready" >&2; exit 1; }
  sleep 1
done

python - <<'PY'
# A test picture (weights are random here, so any image serves to show the path end to end).
import numpy as np
from PIL import Image
y, x = np.mgrid[0:300, 0:400]
rgb = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], -1).astype(np.uint8)
Image.fromarray(rgb).save("out/gradient.png")
PY
vitexport infer out/gradient.png --protocol http --url localhost:8000
vitexport infer out/gradient.png --protocol grpc --url localhost:8001
if vitexport bench --help >/dev/null 2>&1; then
  vitexport bench deit_small resnet50 --quick --output out/bench
fi
