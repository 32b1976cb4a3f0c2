"""`--head features` through serving, against the real Triton server: `vitexport repo` of an embeddings export writes
no labels and an ensemble without top-k; `embed` over HTTP and gRPC (ensemble and plain model) gives what ONNX Runtime
gives in process for the same preprocessed photograph; `vitexport infer` shows size and norm, `--json` the vector;
`classify` on an embeddings model (and `embed` on a classifier) is one line."""

import json
from pathlib import Path

import numpy as np
import pytest
from _photos import photo_paths, photos
from _serving import PROTOCOLS, url
from typer.testing import CliRunner

from vitexport.cli import app
from vitexport.errors import ServingError
from vitexport.models import get_spec
from vitexport.ort import ort_session
from vitexport.preprocess import preprocess_image
from vitexport.serving import client
from vitexport.serving.repository import scan
from vitexport.serving.server import TritonServer

ATOL = 1e-4
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    from vitexport.export.onnx import Heads, export_onnx
    from vitexport.models import create_model

    root = tmp_path_factory.mktemp("embeddings_exports")
    torch.manual_seed(7)
    checkpoint = root / "test_vit.pth"
    torch.save(create_model("test_vit").state_dict(), checkpoint)
    features = export_onnx("test_vit", root / "features.onnx", heads=Heads.features, checkpoint=checkpoint)
    classifier = export_onnx("test_vit", root / "classifier.onnx", checkpoint=checkpoint)
    # The same weights with a fixed batch of 2, served unbatched (the batch in its dims).
    fixed = export_onnx("test_vit", root / "fixed.onnx", heads=Heads.features, checkpoint=checkpoint, batch_size=2)
    return features, classifier, fixed


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """A server of its own, not the shared one: `infer` must find the one ensemble of its repository by itself."""
    features, classifier, fixed = exported
    repo = tmp_path_factory.mktemp("embeddings_repo")
    # Exact preprocessing: the embeddings are compared with it in process (the fast path: test_serving_preprocess_fast).
    args = ["repo", str(features.path), "--repo", str(repo), "--name", "vit_features", "--preprocess", "exact"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"] == ["vit_features", "vit_features_preprocess", "vit_features_image"]
    args = ["repo", str(classifier.path), "--repo", str(repo), "--name", "vit_classes", "--no-ensemble"]
    assert runner.invoke(app, args).exit_code == 0
    args = ["repo", str(fixed.path), "--repo", str(repo), "--name", "vit_fixed", "--no-ensemble"]
    assert runner.invoke(app, args).exit_code == 0
    with TritonServer(repo, startup_timeout=150) as s:
        yield s


def in_process(artifact, images: list[bytes]) -> np.ndarray:
    pixels = np.stack([preprocess_image(b, get_spec("test_vit").preprocess) for b in images])
    (embeddings,) = ort_session(artifact.path).run(["embeddings"], {"pixel_values": pixels})
    return embeddings


def test_the_repository_holds_no_labels_and_no_top_k(server, exported):
    configs = scan(server.repo_dir)
    assert not (server.repo_dir / "vit_features" / "labels.txt").exists()
    assert "vit_features_postprocess" not in configs
    (output,) = configs["vit_features_image"].output
    assert (output.name, list(output.dims)) == ("embeddings", [exported[0].num_classes])
    assert {"vit_features", "vit_features_preprocess", "vit_features_image", "vit_classes"} <= set(server.models)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["vit_features_image", "vit_features"])
def test_served_embeddings_match_onnxruntime_in_process(server, exported, protocol, model):
    images = photos()
    served = client.embed(url(server, protocol), images, protocol=protocol, model=model)
    expected = in_process(exported[0], images)
    assert len(served) == len(images) and all(v.shape == (64,) and v.dtype == np.float32 for v in served)
    np.testing.assert_allclose(np.stack(served), expected, atol=ATOL, rtol=0)
    # Three different photographs: three different embeddings (a constant answer would pass the check above only
    # if the model itself were constant).
    assert np.abs(expected[0] - expected[1]).max() > 100 * ATOL


def test_more_images_than_a_batch(server, exported):
    images = photos() * 3  # 9 images, over the max batch of 8: two requests
    served = client.embed(server.endpoints.grpc, images, protocol="grpc", model="vit_features_image")
    np.testing.assert_allclose(np.stack(served), in_process(exported[0], images), atol=ATOL, rtol=0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_shows_size_and_norm_and_json_gives_the_vector(server, exported, protocol, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the table folds long ones over several lines
    paths = []
    for photo in photo_paths():
        Path(photo.name).write_bytes(photo.read_bytes())
        paths.append(photo.name)
    base = ["infer", *paths, "--url", url(server, protocol), "--protocol", protocol, "--model", "vit_features_image"]
    result = runner.invoke(app, [*base, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    expected = in_process(exported[0], [p.read_bytes() for p in photo_paths()])
    assert [r["image"] for r in rows] == paths
    for row, vector in zip(rows, expected, strict=True):
        assert row["size"] == 64 and len(row["embedding"]) == 64
        np.testing.assert_allclose(row["embedding"], vector, atol=ATOL, rtol=0)
        assert row["norm"] == pytest.approx(float(np.linalg.norm(vector)), abs=1e-3)
    table = runner.invoke(app, base)
    assert table.exit_code == 0, table.output
    for path, row in zip(paths, rows, strict=True):
        assert path in table.output and f"{row['norm']:.4f}" in table.output
        assert f"{row['embedding'][0]:.4f}" in table.output


def test_infer_picks_the_one_ensemble_by_itself(server):
    result = runner.invoke(app, ["infer", str(photo_paths()[0]), "--url", server.endpoints.http, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["size"] == 64


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_an_embeddings_model_and_embed_a_classifier_are_one_line(server, protocol):
    for model in ("vit_features_image", "vit_features"):
        with pytest.raises(ServingError, match=rf"^{model} returns embeddings, not classes: use embed\(\) or"):
            client.classify(url(server, protocol), photos()[:1], protocol=protocol, model=model)
    with pytest.raises(ServingError, match=r"^vit_classes returns classes, not embeddings: use classify\(\) or"):
        client.embed(url(server, protocol), photos()[:1], protocol=protocol, model="vit_classes")
    # The classifier beside it still classifies, and infer shows it as classes.
    (top,) = client.classify(url(server, protocol), photos()[:1], protocol=protocol, model="vit_classes", top_k=3)
    assert len(top.labels) == 3
    args = ["infer", str(photo_paths()[0]), "--url", url(server, protocol), "--protocol", protocol]
    result = runner.invoke(app, [*args, "--model", "vit_classes", "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["indices"] == list(top.indices)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_fixed_batch_model_takes_any_number_of_images(server, exported, protocol):
    images = photos()  # 3 images to a batch of 2: two requests, the second filled up with a zero image
    served = client.embed(url(server, protocol), images, protocol=protocol, model="vit_fixed")
    assert len(served) == 3
    np.testing.assert_allclose(np.stack(served), in_process(exported[0], images), atol=ATOL, rtol=0)
