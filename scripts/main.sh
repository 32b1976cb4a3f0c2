#!/usr/bin/env bash
# Set up, then run the main job end to end: export DeiT-B to ONNX (checked against PyTorch); deploy DeiT-S (every CPU
# variant built and gated on real photographs, the fastest that passed written into a Triton repository) and, beside
# it, a small ViT trained here on handwritten digits; start the real Triton server; classify over HTTP and gRPC (the
# digit comes back with its right label); run a short benchmark; stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p out

vitexport models --family deit
vitexport onnx deit_base --output out/deit_base.onnx
vitexport deploy deit_small --name deit_small --repo model_repository --workdir out/deploy/deit_small

# A model whose answers can be checked: a tiny ViT trained in seconds on scikit-learn's digits, with their labels.
python - <<'PY'
from pathlib import Path

from vitexport.bench.digits import load_digits_images, split, train, write_image_folder
from vitexport.models import get_spec

out = Path("out/digits")
out.mkdir(parents=True, exist_ok=True)
if not (out / "model.pt").is_file():
    print(f"digits ViT: {train(out / 'model.pt'):.1f}% top-1 on held-out digits")
images, labels = load_digits_images(get_spec("test_vit_digits").img_size)
train_idx, test_idx = split(len(labels))
write_image_folder(out / "train", images[train_idx], labels[train_idx])
write_image_folder(out / "test", images[test_idx], labels[test_idx])
(out / "labels.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
PY
vitexport deploy test_vit_digits --checkpoint out/digits/model.pt --calibration out/digits/train \
  --images out/digits/test --labels out/digits/labels.txt --repo model_repository --name digits \
  --workdir out/deploy/digits

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
vitexport infer out/gradient.png --protocol http --url localhost:8000 --model deit_small_image
vitexport infer out/gradient.png --protocol grpc --url localhost:8001 --model deit_small_image
digit=$(ls out/digits/test/7 | head -1)
vitexport infer "out/digits/test/7/$digit" --url localhost:8000 --model digits_image --top-k 1   # digit 7
if vitexport bench --help >/dev/null 2>&1; then
  vitexport bench deit_small resnet50 --quick --output out/bench
fi
