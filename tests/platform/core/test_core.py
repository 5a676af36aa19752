import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from levee import env
from levee.core.net import client_ip


def test_healthz_answers_without_touching_the_database(client):
    # No django_db mark: pytest-django raises on any database access in this test.
    response = client.get("/healthz")
    assert response.status_code == 200 and response["x-request-id"].startswith("req_")


def test_unknown_api_paths_answer_in_the_error_format(client):
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("off", False), ("", False)])
def test_env_bool_reads_the_usual_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("X_FLAG", value)
    assert env.env_bool("X_FLAG") is expected


@pytest.mark.parametrize("reader,value", [(env.env_bool, "maybe"), (lambda n: env.env_int(n, 1), "ten"),
                                          (env.env_cidrs, "10.0.0.0/33")])
def test_bad_settings_fail_loudly(monkeypatch, reader, value):
    monkeypatch.setenv("X_BAD", value)
    with pytest.raises(ImproperlyConfigured, match="X_BAD"):
        reader("X_BAD")


def test_secret_file_is_read(monkeypatch, tmp_path):
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    monkeypatch.setenv("X_SECRET_FILE", str(path))
    assert env.env_secret("X_SECRET") == "s3cret"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(settings):
    import ipaddress

    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.0.0.0/8")]
    factory = RequestFactory()
    spoofed = factory.get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(spoofed) == "203.0.113.9"
    proxied = factory.get("/", REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7, 10.2.2.2")
    assert client_ip(proxied) == "198.51.100.7"  # the rightmost hop that is not one of ours


def test_ipv4_mapped_ipv6_addresses_are_unmapped(settings):
    import ipaddress

    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.0.0.0/8")]
    factory = RequestFactory()
    assert client_ip(factory.get("/", REMOTE_ADDR="::ffff:203.0.113.9")) == "203.0.113.9"
    assert client_ip(factory.get("/", REMOTE_ADDR="[::ffff:cb00:7109]:443")) == "203.0.113.9"
    # A dual-stack proxy is recognised as trusted, and a mapped hop it forwards is unmapped too.
    proxied = factory.get("/", REMOTE_ADDR="::ffff:10.1.1.1", HTTP_X_FORWARDED_FOR="::ffff:198.51.100.7")
    assert client_ip(proxied) == "198.51.100.7"
    assert client_ip(factory.get("/", REMOTE_ADDR="2001:db8::1")) == "2001:db8::1"


def test_production_requires_a_secret_key(tmp_path):
    import subprocess
    import sys

    env_vars = {"LEVEE_ENV": "production", "PATH": "/usr/bin:/bin", "LEVEE_DATA_DIR": str(tmp_path),
                "PYTHONPATH": "platform", "ALLOWED_HOSTS": "example.com"}
    result = subprocess.run([sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='levee.settings'; django.setup()"],
                            env=env_vars, capture_output=True, text=True)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_processes_booting_at_once_agree_on_one_local_secret_key(tmp_path):
    """gunicorn's workers import the settings together: every one must come up with the same key
    (one used to crash with FileExistsError, taking the whole server down at boot)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    # Each process imports first, then waits for the same instant: the calls really overlap.
    code = ("import sys, time; from pathlib import Path; from levee.env import local_secret_key; "
            "import django.core.management.utils; time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
            "print(local_secret_key(Path(sys.argv[1])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)])}
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "data"), start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    keys = {out.strip() for out, _ in results}
    assert len(keys) == 1 and len(keys.pop()) >= 50
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert [f.name for f in (tmp_path / "data").iterdir()] == ["secret_key"]  # no candidates left behind
