"""The production proxy's configuration (ops/nginx/) run outside its image: by the configuration
tests (tests/ops/test_nginx_config.py, Debian's nginx) and by the admission benchmarks' `--proxy`
(ops/bench/admission_flood.py), so that both exercise the very files compose mounts.

`lay_out` copies the files into a folder with the image's paths pointed there, the upstream
`web:8000` at a local address (nginx resolves upstream names when it loads a configuration, and
`web` exists only on the compose network) and, optionally, the listener moved to a loopback port.
Nothing else is changed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX_DIR = ROOT / "ops" / "nginx"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def lay_out(folder: Path, *, upstream: str = "127.0.0.1:8000", listen: int | None = None, tls: bool = False) -> Path:
    """ops/nginx/ laid out under `folder`; returns the main configuration's path."""
    levee, tls_dir, certs = folder / "levee", folder / "tls.d", folder / "certs"
    for sub in (levee, tls_dir, certs, folder / "temp"):
        sub.mkdir(parents=True, exist_ok=True)

    def localise(text: str) -> str:
        text = (text.replace("/etc/nginx/levee-tls.d/", f"{tls_dir}/").replace("/etc/nginx/levee/", f"{levee}/")
                .replace("/etc/nginx/certs/", f"{certs}/").replace("server web:8000;", f"server {upstream};"))
        if listen is not None:
            text = text.replace("listen 80 default_server;", f"listen 127.0.0.1:{listen} default_server;")
            text = text.replace("listen [::]:80 default_server;\n", "")
        return text

    for name in ("proxy.conf", "tls.conf"):
        (levee / name).write_text(localise((NGINX_DIR / name).read_text()))
    conf = localise((NGINX_DIR / "nginx.conf").read_text())
    # Writable temp paths for a run that is not the image's.
    conf = conf.replace("http {", "http {\n" + "".join(
        f"    {kind}_temp_path {folder}/temp/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")), 1)
    (folder / "nginx.conf").write_text(conf)
    if tls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=levee.test",
                        "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")], check=True, capture_output=True)
        (tls_dir / "tls.conf").symlink_to(levee / "tls.conf")
    return folder / "nginx.conf"


def check(conf: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a laid-out configuration."""
    return subprocess.run([_binary(), "-t", "-c", str(conf), "-g", f"pid {conf.parent}/nginx.pid;"],
                          capture_output=True, text=True)


@contextmanager
def running(folder: Path, *, upstream: str, listen: int) -> Iterator[subprocess.Popen]:
    """nginx in the foreground on 127.0.0.1:`listen` in front of `upstream`, until the block ends;
    its error log is `folder`/error.log."""
    conf = lay_out(folder, upstream=upstream, listen=listen)
    log = open(folder / "error.log", "wb")  # a file, not a pipe: a busy proxy's warnings must never block it
    # Run as root (a CI container), nginx's workers drop to `nobody`, who cannot reach a private
    # temporary folder (pytest's are 0700) to buffer request bodies: keep them as the caller.
    user = "user root root; " if os.geteuid() == 0 else ""
    proc = subprocess.Popen([_binary(), "-c", str(conf), "-g", f"{user}pid {folder}/nginx.pid; daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {(folder / 'error.log').read_text(errors='replace')}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _binary() -> str:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (`make nginx` installs Debian's package)")
    return binary
