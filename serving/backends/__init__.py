"""Python-backend `model.py` files, copied into a model version's folder by serving.repository.

They run inside Triton's Python stub, not in vitexport's process: each imports only what its model needs
(`triton_python_backend_utils` exists only there). The model runner (every task's model) takes vitexport's ONNX
Runtime session factory; the pre- and post-processing vitexport's own code, so the server computes what the CLI
does. Each reads its tensor names from its config, as serving.config writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitexport.tasks import Task

BACKENDS_DIR = Path(__file__).parent
MODEL_RUNNER = BACKENDS_DIR / "model_runner.py"  # runs the model of every task on ONNX Runtime or OpenVINO
PREPROCESS_MODEL = BACKENDS_DIR / "preprocess_model.py"  # image bytes -> what the task's model takes
TOPK_MODEL = BACKENDS_DIR / "topk_model.py"  # logits -> every class's probability (Triton ranks the top k)
DETECTIONS_MODEL = BACKENDS_DIR / "detections_model.py"  # logits, boxes, image size -> detections


def postprocess_model(task: Task) -> Path | None:
    """The post-processing model of a task's image ensemble (`Task.postprocess`), None where it answers with its
    model's outputs."""
    return None if task.postprocess is None else BACKENDS_DIR / task.postprocess
