"""The admin live dashboard: staff only, linked from the admin index, fed by a JSON snapshot."""
import json
import time
from datetime import UTC

import pytest

from inference import protocol
from levee.core import metrics
from levee.shield import monitoring as shield_monitoring
from tests.personas import PASSWORD, ada, root

pytestmark = pytest.mark.django_db


def test_it_is_linked_from_the_admin_index_and_polls_its_data(client, redis_client):
    client.force_login(root())
    index = client.get("/admin/")
    assert index.status_code == 200 and b'href="/admin/dashboard/"' in index.content
    page = client.get("/admin/dashboard/")
    assert page.status_code == 200
    assert b'data-source="/admin/dashboard/data"' in page.content and b"levee/dashboard.js" in page.content


@pytest.mark.parametrize("path", ["/admin/dashboard/", "/admin/dashboard/data"])
def test_it_is_for_staff_only(client, path):
    assert client.get(path).status_code == 302  # to the admin login
    client.force_login(ada())
    response = client.get(path)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_snapshot_counts_what_an_operator_watches_during_an_attack(client, redis_client):
    staff = root()
    for _ in range(3):
        client.post("/accounts/login/", {"username": staff.email, "password": "guessing 123456"})
    client.post("/accounts/signup/", {"email": "new@example.com", "password": PASSWORD})
    client.post("/accounts/signup/", {"email": "bad", "password": "x"})
    metrics.count_limiter_decision("api-ip", "blocked")
    metrics.count_limiter_decision("free-chat", "shed")
    metrics.count_limiter_decision("free-chat", "shed")
    redis_client.rpush("inference.deepseek-chat", "a", "b", "c")
    redis_client.zadd(protocol.workers_key("deepseek-chat"), {"gpu-1:7": time.time()})
    redis_client.hset(protocol.worker_stats_key("deepseek-chat"), "gpu-1:7", json.dumps({
        "t": time.time(), "running": 5, "waiting": 0, "max_batch": 32, "free_blocks": 40, "evictable_blocks": 10,
        "num_blocks": 100, "steps": 9, "generated_tokens": 45}))

    client.force_login(staff)
    data = client.get("/admin/dashboard/data").json()
    rates = data["rates"]
    assert len(rates["minutes"]) == 15 and rates["minutes"] == sorted(rates["minutes"])
    assert rates["login_failed"][-1] == 3
    assert rates["signups"]["accepted"][-1] == 1 and rates["signups"]["invalid"][-1] == 1
    assert rates["signups_total"][-1] == 2
    assert rates["blocked"][-1] == 1 and rates["shed"][-1] == 2
    model = data["models"]["deepseek-chat"]
    assert model["depth"] == 3 and model["live_workers"] == 1 and list(model["workers"]) == ["gpu-1:7"]
    assert model["engines"]["gpu-1:7"] == {"running": 5, "max_batch": 32, "waiting": 0, "kv_free": 0.5,
                                          "spec_acceptance": None}
    assert data["mode"]["mode"] == "normal"
    assert data["billing"] == {"open_holds": 0}


def test_it_shows_the_mode_and_who_set_it_once_the_shield_answers(client, redis_client, monkeypatch):
    from datetime import datetime

    monkeypatch.setattr(shield_monitoring, "current_mode", lambda: {
        "mode": "under_attack", "set_by": "ops@example.com", "reason": "signup flood",
        "set_at": datetime(2025, 1, 27, 12, 0, tzinfo=UTC), "pinned": True})
    client.force_login(root())
    mode = client.get("/admin/dashboard/data").json()["mode"]
    assert mode == {"mode": "under_attack", "set_by": "ops@example.com", "reason": "signup flood",
                    "set_at": "2025-01-27T12:00:00+00:00", "pinned": True}


def test_a_redis_outage_degrades_sections_instead_of_failing_the_page(client, settings):
    client.force_login(root())
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    data = client.get("/admin/dashboard/data").json()
    assert data["rates"]["error"].startswith("unavailable") and data["models"]["error"].startswith("unavailable")
    assert data["billing"] == {"open_holds": 0}
