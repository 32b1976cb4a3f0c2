"""Client errors that need no server: each is one ServingError line, never a tritonclient traceback. The client
against a live server is tested in test_serving_server.py."""

import socket
import threading
import time

import numpy as np
import pytest

from vitexport.errors import ServingError
from vitexport.serving import client
from vitexport.serving.client import Protocol, TopK
from vitexport.serving.server import free_ports


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
    for ask in (client.embed, client.predict):
        with pytest.raises(ServingError, match=f"cannot reach Triton at {closed_port}"):
            ask(closed_port, [image], protocol=protocol)


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: a hung server, which a client without timeouts would wait on forever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        accepted = []
        threading.Thread(target=lambda: [accepted.append(listener.accept()) for _ in range(16)], daemon=True).start()
        yield f"127.0.0.1:{listener.getsockname()[1]}"
        for conn, _ in accepted:
            conn.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hung_server_times_out_in_one_line(silent_server, protocol):
    started = time.monotonic()
    with pytest.raises(ServingError, match=r"cannot read m's config from .*: no reply within 0\.5 s"):
        client.classify(silent_server, [b"x"], protocol=protocol, model="m", timeout=0.5)
    with pytest.raises(ServingError, match=r"cannot reach Triton at .*: no reply within 0\.5 s"):
        client.classify(silent_server, [b"x"], protocol=protocol, timeout=0.5)
    with pytest.raises(ServingError, match=r"m refused the request: no reply within 0\.5 s"):
        client.infer(silent_server, "m", {"x": np.zeros((1, 2), np.float32)}, ["y"], protocol=protocol, timeout=0.5)
    assert time.monotonic() - started < 10


def test_bad_arguments(closed_port, tmp_path):
    with pytest.raises(ServingError, match="protocol must be http or grpc"):
        client.classify(closed_port, [b"x"], protocol="ftp")
    with pytest.raises(ServingError, match="no images"):
        client.classify(closed_port, [])
    with pytest.raises(ServingError, match="top-k must be >= 1"):
        client.classify(closed_port, [b"x"], top_k=0)
    with pytest.raises(ServingError, match="timeout must be > 0"):
        client.classify(closed_port, [b"x"], timeout=0)
    with pytest.raises(ServingError, match="cannot read image"):
        client.classify(closed_port, [tmp_path / "missing.jpg"])


@pytest.mark.parametrize("ask", [client.embed, client.predict])
def test_bad_arguments_to_embed_and_predict(closed_port, tmp_path, ask):
    with pytest.raises(ServingError, match="protocol must be http or grpc"):
        ask(closed_port, [b"x"], protocol="ftp")
    with pytest.raises(ServingError, match="no images"):
        ask(closed_port, [])
    with pytest.raises(ServingError, match="timeout must be > 0"):
        ask(closed_port, [b"x"], timeout=0)
    with pytest.raises(ServingError, match="cannot read image"):
        ask(closed_port, [tmp_path / "missing.jpg"])


def test_metrics_from_an_unreachable_server(closed_port):
    with pytest.raises(ServingError, match="cannot read metrics"):
        client.read_metrics(f"http://{closed_port}/metrics")


def test_defaults_and_results():
    assert Protocol("grpc").default_url == "localhost:8001" and Protocol.http.default_url == "localhost:8000"
    top = TopK(("tench, Tinca tinca",), (0.9,), (0,))
    assert top.to_dict() == {"labels": ["tench, Tinca tinca"], "scores": [0.9], "indices": [0]}


def test_the_classification_extensions_strings_are_read_as_triton_writes_them():
    from vitexport.serving.topk import Ranked

    # "value:index:label" (std::to_string: six decimals); a label may hold colons; an unlabelled output's index
    assert Ranked.parse(b"0.250000:7:a: b") == Ranked(0.25, 7, "a: b")
    assert Ranked.parse("1.500000:3") == Ranked(1.5, 3, "3")


def test_the_default_top_k_is_the_repositorys():
    """The image ensemble's top_k (`repo --top-k`), a vitexport 0.1 ensemble's top-k width, else 5 at most the
    classes of a plain model."""
    from vitexport.serving import config as cfg
    from vitexport.serving.topk import default_top_k

    ensemble = cfg.parse('output { name: "probabilities" data_type: TYPE_FP32 dims: 1000 }')
    ensemble.parameters["top_k"].string_value = "7"
    assert default_top_k(ensemble) == 7
    old = cfg.parse('output { name: "labels" data_type: TYPE_STRING dims: 3 }')
    assert default_top_k(old) == 3
    assert default_top_k(cfg.parse('output { name: "logits" data_type: TYPE_FP32 dims: 1000 }')) == 5
    assert default_top_k(cfg.parse('output { name: "logits" data_type: TYPE_FP32 dims: 2 }')) == 2


@pytest.fixture
def other_http_server():
    """Something that speaks HTTP but is not Triton: an empty 200 to every request, as Triton's metrics port gives
    to the API's GETs."""
    import http.server

    class Empty(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_server_that_is_not_triton_is_one_line(other_http_server):
    """Its empty reply was tritonclient's JSONDecodeError, a traceback."""
    with pytest.raises(ServingError, match=r"cannot read m's config from .*: no Triton HTTP API there"):
        client.classify(other_http_server, [b"x"], model="m", timeout=5)
