"""The reverse proxy's configuration (ops/nginx/), checked by the real nginx: Debian's package, which
`make test` installs when it can (the Makefile's `nginx` target). The production image is nginx's
official one; the configuration uses nothing Debian's build lacks.

`ops.edge` lays the files out in a temporary folder (paths pointed there, the upstream `web:8000`
at loopback); the admission benchmarks' `--proxy` runs the same files the same way.
"""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from ops import edge

NGINX = edge.nginx_binary()
pytestmark = pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed and could not be "
                                "(`make nginx` needs root and apt-get): the proxy configuration is not checked")


def test_the_configuration_is_valid(tmp_path):
    result = edge.check(edge.lay_out(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_the_configuration_with_tls_is_valid(tmp_path):
    result = edge.check(edge.lay_out(tmp_path, tls=True))
    assert result.returncode == 0, result.stderr


def test_the_check_would_catch_a_mistake(tmp_path):
    conf = edge.lay_out(tmp_path)
    conf.write_text(conf.read_text().replace("client_max_body_size 4m;", "client_max_body_size four;"))
    assert edge.check(conf).returncode != 0


class _Echo(http.server.BaseHTTPRequestHandler):
    """The upstream: answers with the forwarding headers it was given."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (f"xff={self.headers.get('X-Forwarded-For')} proto={self.headers.get('X-Forwarded-Proto')} "
                f"id={self.headers.get('X-Request-Id')!r}").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy(tmp_path):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with edge.running(tmp_path, upstream=f"127.0.0.1:{upstream.server_port}", listen=port):
        yield f"http://127.0.0.1:{port}"
    upstream.shutdown()


def test_the_proxy_replaces_forwarding_headers_and_refuses_oversized_bodies(proxy):
    import httpx

    with httpx.Client(base_url=proxy, timeout=10) as http:
        echoed = http.get("/", headers={"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "chosen-by-client"}).text
        assert "xff=127.0.0.1 " in echoed and "proto=http" in echoed and "6.6.6.6" not in echoed
        assert "chosen-by-client" not in echoed
        assert http.post("/v1/chat/completions", content=b"x" * (4 * 1024 * 1024 + 1)).status_code == 413
        assert http.post("/v1/chat/completions", content=b"x" * 1000).status_code == 200


def test_the_proxy_limits_requests_per_address(proxy):
    import httpx

    with httpx.Client(base_url=proxy, timeout=10) as http:
        codes = [http.get("/").status_code for _ in range(130)]  # burst 100 at 20/s
    assert codes[0] == 200 and 429 in codes
