"""The reverse proxy's configuration (ops/nginx/), checked by the real nginx: Debian's package, which
`make test` installs when it can (the Makefile's `nginx` target). The production image is nginx's
official one; the configuration uses nothing Debian's build lacks.

Paths are pointed into a temporary folder and the upstream `web:8000` at loopback (nginx resolves
upstream names when it loads a configuration, and `web` exists only on the compose network);
nothing else is changed.
"""
from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed and could not be "
                                "(`make nginx` needs root and apt-get): the proxy configuration is not checked")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lay_out(tmp: Path, *, upstream: str = "127.0.0.1:8000", listen: int | None = None, tls: bool = False) -> Path:
    levee, tls_dir, certs = tmp / "levee", tmp / "tls.d", tmp / "certs"
    for folder in (levee, tls_dir, certs, tmp / "temp"):
        folder.mkdir(exist_ok=True)

    def localise(text: str) -> str:
        text = (text.replace("/etc/nginx/levee-tls.d/", f"{tls_dir}/").replace("/etc/nginx/levee/", f"{levee}/")
                .replace("/etc/nginx/certs/", f"{certs}/").replace("server web:8000;", f"server {upstream};"))
        if listen is not None:
            text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{listen} default_server;")
            text = text.replace("listen [::]:80 default_server;\n", "")
        return text

    for name in ("proxy.conf", "tls.conf"):
        (levee / name).write_text(localise((ROOT / "ops" / "nginx" / name).read_text()))
    conf = localise((ROOT / "ops" / "nginx" / "nginx.conf").read_text())
    # Writable temp paths for a run that is not the image's.
    conf = conf.replace("http {", "http {\n" + "".join(
        f"    {kind}_temp_path {tmp}/temp/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")), 1)
    (tmp / "nginx.conf").write_text(conf)
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=levee.test",
                        "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")], check=True, capture_output=True)
        (tls_dir / "tls.conf").symlink_to(levee / "tls.conf")
    return tmp / "nginx.conf"


def _nginx_t(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-c", str(conf), "-g", f"pid {conf.parent}/nginx.pid;"],
                          capture_output=True, text=True)


def test_the_configuration_is_valid(tmp_path):
    result = _nginx_t(_lay_out(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_the_configuration_with_tls_is_valid(tmp_path):
    result = _nginx_t(_lay_out(tmp_path, tls=True))
    assert result.returncode == 0, result.stderr


def test_the_check_would_catch_a_mistake(tmp_path):
    conf = _lay_out(tmp_path)
    conf.write_text(conf.read_text().replace("client_max_body_size 4m;", "client_max_body_size four;"))
    assert _nginx_t(conf).returncode != 0


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
    port = _free_port()
    conf = _lay_out(tmp_path, upstream=f"127.0.0.1:{upstream.server_port}", listen=port)
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid; daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
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
