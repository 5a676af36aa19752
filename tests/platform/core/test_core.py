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


def test_production_requires_a_secret_key(tmp_path):
    import subprocess
    import sys

    env_vars = {"LEVEE_ENV": "production", "PATH": "/usr/bin:/bin", "LEVEE_DATA_DIR": str(tmp_path),
                "PYTHONPATH": "platform", "ALLOWED_HOSTS": "example.com"}
    result = subprocess.run([sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='levee.settings'; django.setup()"],
                            env=env_vars, capture_output=True, text=True)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
