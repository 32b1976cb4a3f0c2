"""Python-backend `model.py` files, copied into a model version's folder by serving.repository.

They run inside Triton's Python stub, not in vitexport's process: each imports only what its model needs
(`triton_python_backend_utils` exists only there), and the classifier models import nothing from vitexport.
"""

from pathlib import Path

BACKENDS_DIR = Path(__file__).parent
CLASSIFIER_MODEL = BACKENDS_DIR / "classifier_model.py"
PREPROCESS_MODEL = BACKENDS_DIR / "preprocess_model.py"
POSTPROCESS_MODEL = BACKENDS_DIR / "postprocess_model.py"
