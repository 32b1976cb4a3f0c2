"""The real photographs for calibration and gates: packaged in scikit-image's wheel and read offline, cut into
deterministic crops, calibration and gate photos disjoint, written once into a cache folder."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from vitexport.errors import VitExportError
from vitexport.export.photos import CALIBRATION_PHOTOS, GATE_PHOTOS, PHOTOS, crops, load_photo, photo_folder

pytest.importorskip("skimage")


def test_every_photo_loads_without_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a photo was fetched from the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in PHOTOS:
        image = load_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 300, name  # photographs, large enough to crop at several scales


def test_crops_are_deterministic_and_varied():
    a = crops(12, photos=CALIBRATION_PHOTOS, size=64, seed=0)
    b = crops(12, photos=CALIBRATION_PHOTOS, size=64, seed=0)
    assert [n for n, _ in a] == [n for n, _ in b] == list(CALIBRATION_PHOTOS) * 3
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    assert all(x.shape == (64, 64, 3) for _, x in a)
    # Every crop differs from every other (scales, positions, mirrors), and another seed gives other crops.
    flat = {x.tobytes() for _, x in a}
    assert len(flat) == 12
    assert not np.array_equal(a[5][1], crops(12, photos=CALIBRATION_PHOTOS, size=64, seed=1)[5][1])


def test_calibration_and_gate_photos_are_disjoint():
    assert not set(CALIBRATION_PHOTOS) & set(GATE_PHOTOS)
    assert set(CALIBRATION_PHOTOS) | set(GATE_PHOTOS) == set(PHOTOS)


def test_photo_folder_is_written_once(tmp_path):
    folder = photo_folder(10, photos=GATE_PHOTOS, size=32, cache=tmp_path)
    files = sorted(folder.iterdir())
    assert [f.name for f in files[:3]] == ["0000_chelsea.png", "0001_motorcycle.png", "0002_coins.png"]
    assert len(files) == 10 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    stamp = files[0].stat().st_mtime_ns
    photo_folder.cache_clear()  # another process: the folder on disk is reused, not rewritten
    assert photo_folder(10, photos=GATE_PHOTOS, size=32, cache=tmp_path) == folder
    assert files[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_photo("lena"), "unknown photo 'lena'; known: astronaut"),
        (lambda: crops(0, photos=GATE_PHOTOS), "count >= 1"),
        (lambda: crops(3, photos=()), "at least one photo"),
    ],
)
def test_bad_requests_are_one_line(call, message):
    with pytest.raises(VitExportError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_importable_without_torch():
    code = "import sys, vitexport.export.photos; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bench_calibrates_imagenet_models_on_photos_and_the_digits_model_on_digits(tmp_path):
    from vitexport.bench.prepare import CALIBRATION_IMAGES, GATE_IMAGES, _image_folders
    from vitexport.tasks import DETECTION

    calibration, gate = _image_folders(tmp_path, "deit_small_patch16_224", 224, "classification")
    assert len(list(calibration.glob("*_astronaut.png"))) == CALIBRATION_IMAGES // len(CALIBRATION_PHOTOS)
    assert len(list(gate.iterdir())) == GATE_IMAGES and not list(gate.glob("*_astronaut.png"))
    _, detector_gate = _image_folders(tmp_path, "detr_resnet50", 800, "detection")  # seconds per image: fewer
    assert len(list(detector_gate.iterdir())) == DETECTION.bench_gate_images
    calibration, _ = _image_folders(tmp_path, "test_vit_digits", 64, "classification")
    assert sorted(d.name for d in calibration.iterdir()) == [str(i) for i in range(10)]  # labelled digits
