"""The README's Python runs as printed: every ```python block, in order, in one namespace, in a fresh folder holding
what the README says it needs (`photos/`: a few JPEG photographs; `photo.jpg`). It exports, quantizes, writes a
repository and classifies through a real Triton server, as a reader would."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image's, packaged in its wheel: no download


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def _prepare(folder: Path) -> None:
    import skimage.data
    from PIL import Image

    (folder / "photos").mkdir()
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((320, 320))
        image.save(folder / "photos" / f"{name}.jpg", quality=90)
    Image.open(folder / "photos" / "chelsea.jpg").save(folder / "photo.jpg", quality=90)


def test_the_readme_has_python_examples():
    blocks = python_blocks(README.read_text())
    assert blocks and any("import vitexport as vx" in b for b in blocks)


@pytest.mark.integration  # the README's example serves with a real Triton
def test_the_readme_python_runs(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    _prepare(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for i, block in enumerate(python_blocks(README.read_text())):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    import vitexport

    lines = printed.getvalue().splitlines()
    assert lines[0] == vitexport.__version__
    assert int(lines[1]) == vitexport.get_spec("deit_small").num_params
    # What the example built is what it says: a 10-class model, an INT8 variant that passed its gate, served.
    assert namespace["model"].head.out_features == 10
    assert namespace["int8"].precision == "int8" and namespace["int8"].passed_gate
    assert (tmp_path / "model_repository" / "vit_image" / "config.pbtxt").is_file()
    (top,) = [line for line in lines[2:] if line.startswith("TopK(")]
    assert "labels=" in top and "scores=" in top
