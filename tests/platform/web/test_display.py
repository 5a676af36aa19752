"""What every page shows alike: the colour scheme chosen, the free chat allowance of the current
mode, what still works under attack, and only the models a worker is serving."""
import time

import pytest
import redis
from django.urls import reverse

from inference import protocol
from levee.api.models import LlmModel
from tests.personas import ada

pytestmark = pytest.mark.django_db


def test_the_chosen_scheme_is_rendered_and_anything_else_follows_the_system(client):
    assert b'<html lang="en">' in client.get(reverse("home")).content
    client.cookies["levee_theme"] = "dark"
    assert b'data-theme="dark"' in client.get(reverse("home")).content
    client.cookies["levee_theme"] = '"><script>'
    page = client.get(reverse("home")).content
    assert b"data-theme" not in page and b"<script>\"" not in page


@pytest.mark.parametrize("mode, shown", [("normal", "100,000"), ("elevated", "50,000")])
def test_every_page_states_the_same_allowance_for_the_mode(client, monkeypatch, settings, mode, shown):
    from levee.shield import state

    settings.LEVEE_WEB_CHAT_DAILY_TOKENS = 100_000
    monkeypatch.setattr(state, "current_mode", lambda: mode)
    client.force_login(ada())
    home = client.get(reverse("home")).content.decode()
    usage = client.get(reverse("usage-page")).content.decode()
    chat = client.get(reverse("chat")).content.decode()
    assert f"free up to {shown} tokens a day" in home
    assert f"/ {shown}</p>" in usage
    assert f"of {shown} tokens used" in chat
    other = "50,000" if mode == "normal" else "100,000"
    assert all(other not in page for page in (home, usage, chat))
    assert (f"limited to {shown} tokens a day" in home) == (mode == "elevated")


def test_under_attack_the_banner_says_what_still_works(client, monkeypatch):
    from levee.shield import state

    monkeypatch.setattr(state, "current_mode", lambda: "under_attack")
    page = client.get(reverse("home")).content.decode()
    assert "registration may be busy" in page
    assert "Registered users can log in normally, and chat and the API keep working" in page


def test_the_model_picker_lists_only_models_a_worker_serves(client, settings):
    for name in ("deepseek-chat", "deepseek-reasoner", "idle-model"):
        LlmModel.objects.update_or_create(name=name, defaults={"enabled": True})
    LlmModel.objects.update_or_create(name="off-model", defaults={"enabled": False})
    r = redis.Redis.from_url(settings.REDIS_URL)
    now = time.time()
    r.zadd(protocol.workers_key("deepseek-chat"), {"w1": now})
    r.zadd(protocol.workers_key("deepseek-reasoner"), {"w2": now})
    r.zadd(protocol.workers_key("idle-model"), {"gone": now - protocol.WORKER_TTL_S - 5})  # heartbeat lapsed
    r.zadd(protocol.workers_key("off-model"), {"w3": now})
    client.force_login(ada())
    page = client.get(reverse("chat")).content.decode()
    assert '<option value="deepseek-chat"' in page and '<option value="deepseek-reasoner"' in page
    assert "idle-model" not in page and "off-model" not in page
    assert 'id="no-models"' not in page
    r.delete(*[protocol.workers_key(n) for n in ("deepseek-chat", "deepseek-reasoner")])
    page = client.get(reverse("chat")).content.decode()
    assert "<option value=\"deepseek" not in page and 'id="no-models"' in page
