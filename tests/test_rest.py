"""The query path's REST transport: kept-alive connections that the server drops are reopened,
threads do not share a connection, a URL path prefix is kept, proxies are honoured, and answers
equal those of the qdrant-client path on a real server."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient

from ftfsearch.store.rest import RestError, RestTransport, _proxied
from ftfsearch.store.server import ServerStore

from _store_data import filled, texts


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST with its path and body, then drops the connection without saying so
    (no ``Connection: close``), as a server does when an idle kept-alive connection times out."""

    protocol_version = "HTTP/1.1"
    connections: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        out = json.dumps({"path": self.path, "body": body.decode(), "key": self.headers.get("api-key")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
        self.wfile.flush()
        self.close_connection = True

    def setup(self) -> None:
        super().setup()
        _Echo.connections.append(1)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url():
    _Echo.connections = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_dropped_keepalive_connection_is_reopened_and_prefix_kept(echo_url):
    rest = RestTransport(echo_url + "/qdrant/", {"api-key": "k"}, timeout=5.0)
    try:
        for i in range(3):
            status, data = rest.post("/collections/x/points/query", json.dumps({"i": i}).encode())
            assert status == 200
            got = json.loads(data)
            assert got == {"path": "/qdrant/collections/x/points/query", "body": json.dumps({"i": i}), "key": "k"}
        assert len(_Echo.connections) == 3  # one fresh connection per request, none failed
    finally:
        rest.close()


def test_threads_get_their_own_connections(echo_url):
    rest = RestTransport(echo_url, {}, timeout=5.0)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            bodies = list(pool.map(lambda i: json.loads(rest.post(f"/p{i}", str(i).encode())[1]), range(40)))
        assert [b["path"] for b in bodies] == [f"/p{i}" for i in range(40)]
        assert [b["body"] for b in bodies] == [str(i) for i in range(40)]
    finally:
        rest.close()


def test_refused_connection_is_a_rest_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens there
    rest = RestTransport(f"http://127.0.0.1:{port}", {}, timeout=2.0)
    with pytest.raises(RestError) as err:
        rest.post("/x", b"{}")
    assert not err.value.timed_out
    rest.close()


def test_proxy_settings_are_honoured(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert not _proxied("http://qdrant.internal:6333")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert _proxied("http://qdrant.internal:6333")
    monkeypatch.setenv("NO_PROXY", "qdrant.internal")
    assert not _proxied("http://qdrant.internal:6333")


@pytest.mark.server
def test_concurrent_recalls_equal_the_client_path(qdrant_server):
    """Four threads through the store's connections answer as qdrant-client does, query by query."""
    store = ServerStore(qdrant_server, collection=f"t_{uuid.uuid4().hex[:12]}", timeout=10.0)
    try:
        filled(store)
        queries = texts(8) * 3
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda t: store.recall(t, 20, with_vectors=False, with_payload=False), queries))
        client = QdrantClient(url=qdrant_server, check_compatibility=False)  # qdrant-client's own path
        try:
            for t, cands in zip(queries, got):
                points = client.query_points(store.collection, query=t.tolist(), using="coarse", limit=20).points
                assert cands.ids == [str(p.id) for p in points]
                np.testing.assert_allclose(cands.scores, [p.score for p in points], rtol=0, atol=1e-6)
        finally:
            client.close()
    finally:
        store.drop_collection()
        store.close()


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, made with the openssl CLI (the test skips without it)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_checks_the_certificate_as_httpx_does(tmp_path, monkeypatch):
    """TLS uses httpx's SSL context: trusted through SSL_CERT_FILE it answers; untrusted it fails."""
    import ssl

    cert, key = _self_signed(tmp_path)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    url = f"https://127.0.0.1:{srv.server_address[1]}"
    try:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        rest = RestTransport(url, {}, timeout=5.0)
        status, data = rest.post("/secure", b"{}")
        assert status == 200 and json.loads(data)["path"] == "/secure"
        rest.close()
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = RestTransport(url, {}, timeout=5.0)
        with pytest.raises(RestError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            untrusted.post("/secure", b"{}")
        untrusted.close()
    finally:
        srv.shutdown()
        srv.server_close()
