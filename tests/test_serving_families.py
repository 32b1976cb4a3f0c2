"""The families of issue 10 served (item 6): the tiny BEiT, MAE, Swin and MobileViT, exported with perturbed weights,
written into the shared repository (tests/conftest.py) with their image ensembles and served by the session's one real
Triton; over HTTP and gRPC each
ensemble's top-k for real photographs equals ONNX Runtime's in process on the same preprocessed pixels, and each
plain model's logits equal ONNX Runtime's."""

import numpy as np
import pytest
from _photos import photos
from _serving import PROTOCOLS, url

from vitexport.models import get_spec
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image
from vitexport.serving import client

FAMILIES = ("test_beit", "test_mae", "test_swin", "test_mobilevit")
TOP_K = 5  # the shared server writes each family with this top-k


@pytest.fixture(scope="module")
def exported(tiny):
    """Each family perturbed, its batch norms calibrated on the photographs, exported: what the shared server serves."""
    return {name: tiny(name, calibrated=True).onnx for name in FAMILIES}


def in_process(artifact, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime in this process on the pixels vitexport's preprocessing makes of the images: (pixels, logits)."""
    pixels = np.stack([preprocess_image(b, artifact.preprocess) for b in images])
    (logits,) = ort_session(artifact.path).run(["logits"], {"pixel_values": pixels})
    return pixels, logits


def test_every_family_and_its_ensemble_loads(server):
    expected = {f"{name}{part}" for name in FAMILIES for part in ("", "_preprocess", "_postprocess", "_image")}
    assert expected <= set(server.models)


def test_preprocessing_is_each_familys_own(tiny):
    # MobileViT takes [0, 1] pixels (mean 0, std 1), unlike the others: the served preprocessing follows the artifact.
    exported = {"test_mobilevit": tiny("test_mobilevit", calibrated=True).onnx}  # alone: no server, one export
    assert exported["test_mobilevit"].preprocess == get_spec("test_mobilevit").preprocess
    assert exported["test_mobilevit"].preprocess.mean == (0.0, 0.0, 0.0)
    assert exported["test_mobilevit"].preprocess.std == (1.0, 1.0, 1.0)
    pixels, _ = in_process(exported["test_mobilevit"], photos())
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", FAMILIES)
def test_ensemble_top_k_matches_onnxruntime_in_process(server, exported, name, protocol):
    images = photos()
    served = client.classify(url(server, protocol), images, protocol=protocol, model=f"{name}_image", top_k=TOP_K)
    _, logits = in_process(exported[name], images)
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1)
    labels = (server.repo_dir / name / "labels.txt").read_text().splitlines()
    for result, row, logit, p in zip(served, order, logits, probs, strict=True):
        # The top k + 1 logits are apart: equal indices mean the server computed the same ranking, not a tie's.
        assert np.diff(-logit[row[: TOP_K + 1]]).min() > 1e-4
        assert list(result.indices) == row[:TOP_K].tolist()
        assert list(result.labels) == [labels[i] for i in row[:TOP_K]]
        np.testing.assert_allclose(result.scores, p[row[:TOP_K]], atol=1e-5, rtol=0)
    # The photographs are told apart: a model answering the same for every image would not show a mix-up.
    assert len({r.indices for r in served}) == len(images)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", FAMILIES)
def test_plain_model_logits_match_onnxruntime_in_process(server, exported, name, protocol):
    pixels, expected = in_process(exported[name], photos())
    (served,) = client.infer(url(server, protocol), name, {"pixel_values": pixels}, ["logits"], protocol=protocol)
    assert served.shape == (len(pixels), get_spec(name).num_classes)
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
