"""The web tier's side of the edge: a Content-Security-Policy that allows only our own scripts (and
templates that need nothing more), HTTPS believed only from the configured proxy, and production's
HSTS and redirect to HTTPS."""
import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = sorted((ROOT / "platform" / "templates").rglob("*.html"))


def _policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/accounts/signup/", "/pricing", "/admin/login/"])
def test_pages_carry_a_policy_that_allows_only_our_own_scripts(client, path):
    response = client.get(path)
    assert response.status_code == 200
    policy = _policy(response)
    assert policy["script-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'self'"]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT / "platform" / "templates")))
def test_no_template_has_inline_script_or_event_handlers(template):
    """Under `script-src 'self'` the browser would refuse them: every script is a static file."""
    text = template.read_text()
    for tag in re.findall(r"<script\b[^>]*>", text, flags=re.I):
        assert "src=" in tag or 'type="application/json"' in tag, f"inline script: {tag}"
    assert not re.search(r"\son[a-z]+\s*=", text, flags=re.I), "inline event handler"
    assert "javascript:" not in text.lower()


def test_data_reaches_scripts_as_json_not_as_code():
    assert '|json_script:"initial-messages"' in (ROOT / "platform/templates/chat/chat.html").read_text()


@pytest.mark.django_db
def test_forwarded_proto_is_believed_only_from_a_configured_proxy(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.89.0.10/32")]
    from levee.core.middleware import RequestIdMiddleware

    seen = {}

    def view(request):
        seen["secure"] = request.is_secure()
        from django.http import HttpResponse

        return HttpResponse("ok")

    from django.test import RequestFactory

    middleware = RequestIdMiddleware(view)
    middleware(RequestFactory().get("/", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_PROTO="https"))
    assert seen["secure"] is False  # a client claiming HTTPS for itself
    middleware(RequestFactory().get("/", REMOTE_ADDR="10.89.0.10", HTTP_X_FORWARDED_PROTO="https",
                                    HTTP_X_FORWARDED_FOR="198.51.100.1"))
    assert seen["secure"] is True  # the proxy saying so


def test_production_sends_hsts_and_redirects_to_https(tmp_path):
    env = {"LEVEE_ENV": "production", "PATH": "/usr/bin:/bin", "LEVEE_DATA_DIR": str(tmp_path),
           "PYTHONPATH": "platform", "ALLOWED_HOSTS": "levee.example.com", "SECRET_KEY": "k" * 50,
           "TRUSTED_PROXY_CIDRS": "10.89.0.10/32", "LEVEE_WORKER_SECRET": "w" * 50}
    code = ("import django, json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'levee.settings'; django.setup();"
            "from django.conf import settings as s; print(json.dumps([s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS,"
            " s.SECURE_PROXY_SSL_HEADER, s.SECURE_REDIRECT_EXEMPT, s.SESSION_COOKIE_SECURE]))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    redirect, hsts, header, exempt, secure_cookie = json.loads(result.stdout.strip().splitlines()[-1])
    assert redirect is True and hsts >= 180 * 24 * 3600 and secure_cookie is True
    assert header == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert {"^healthz$", "^readyz$", "^metrics$"} <= set(exempt)


@pytest.mark.django_db
def test_an_https_redirect_and_hsts_header_when_enabled(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXY_CIDRS = [ipaddress.ip_network("10.89.0.10/32")]
    client = Client()
    plain = client.get("/pricing", REMOTE_ADDR="10.89.0.10", HTTP_X_FORWARDED_PROTO="http")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    spoofed = client.get("/pricing", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_PROTO="https")
    assert spoofed.status_code == 301  # not believed: still plain HTTP
    secure = client.get("/pricing", REMOTE_ADDR="10.89.0.10", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200 and secure["Strict-Transport-Security"].startswith("max-age=3600")
    assert client.get("/healthz", REMOTE_ADDR="127.0.0.1").status_code == 200
