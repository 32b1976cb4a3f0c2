"""Client errors that need no server: each is one ServingError line, never a tritonclient traceback. The client
against a live server is tested in test_serving_server.py."""

import pytest

from serving import client
from serving.client import Protocol, TopK
from serving.server import free_ports
from vitexport.errors import ServingError


@pytest.fixture
def closed_port():
    (port,) = free_ports("127.0.0.1", 1)
    return f"127.0.0.1:{port}"  # nothing listens here


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unreachable_server_is_one_line(closed_port, protocol, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG")
    with pytest.raises(ServingError, match=f"cannot reach Triton at {closed_port}"):
        client.classify(closed_port, [image], protocol=protocol)
    with pytest.raises(ServingError, match="cannot read m's config"):
        client.classify(closed_port, [image], protocol=protocol, model="m")


def test_bad_arguments(closed_port, tmp_path):
    with pytest.raises(ServingError, match="protocol must be http or grpc"):
        client.classify(closed_port, [b"x"], protocol="ftp")
    with pytest.raises(ServingError, match="no images"):
        client.classify(closed_port, [])
    with pytest.raises(ServingError, match="top-k must be >= 1"):
        client.classify(closed_port, [b"x"], top_k=0)
    with pytest.raises(ServingError, match="cannot read image"):
        client.classify(closed_port, [tmp_path / "missing.jpg"])


def test_metrics_from_an_unreachable_server(closed_port):
    with pytest.raises(ServingError, match="cannot read metrics"):
        client.read_metrics(f"http://{closed_port}/metrics")


def test_defaults_and_results():
    assert Protocol("grpc").default_url == "localhost:8001" and Protocol.http.default_url == "localhost:8000"
    top = TopK(("tench, Tinca tinca",), (0.9,), (0,))
    assert top.to_dict() == {"labels": ["tench, Tinca tinca"], "scores": [0.9], "indices": [0]}
