"""Python-backend `model.py` files, copied into a model version's folder by serving.repository.

They run inside Triton's Python stub, not in vitexport's process: each imports only what its model needs
(`triton_python_backend_utils` exists only there). The top-k imports numpy alone; the model runner takes vitexport's
ONNX Runtime session factory, and the pre- and post-processing vitexport's own code, so the server computes what
the CLI does.
"""

from pathlib import Path

BACKENDS_DIR = Path(__file__).parent
CLASSIFIER_MODEL = BACKENDS_DIR / "classifier_model.py"
PREPROCESS_MODEL = BACKENDS_DIR / "preprocess_model.py"
POSTPROCESS_MODEL = BACKENDS_DIR / "postprocess_model.py"
DETECTION_POSTPROCESS_MODEL = BACKENDS_DIR / "detection_postprocess_model.py"
