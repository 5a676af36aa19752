"""Mitigation modes: one audited switch in admin, a banner, what under_attack does to sign-up
(and does not do to login and the API), and the automation with its operator pin."""
import hashlib

import pytest
from django.urls import reverse

from levee.keys.services import create_api_key
from levee.shield import pow, services, state, stats, tasks
from levee.shield.models import MitigationState, ModeChange
from tests.personas import PASSWORD, ada, root

pytestmark = pytest.mark.django_db

CHANGE_URL = "/admin/shield/mitigationstate/1/change/"


@pytest.fixture
def operator(client):
    client.force_login(root())
    return client


def flip(operator_client, mode, reason="flood from AS64500", pinned=False):
    data = {"mode": mode, "change_reason": reason}
    if pinned:
        data["pinned"] = "on"
    return operator_client.post(CHANGE_URL, data)


def test_an_operator_flips_the_mode_in_admin_with_a_reason_and_it_is_audited(
        operator, django_capture_on_commit_callbacks, redis_client):
    with django_capture_on_commit_callbacks(execute=True):
        response = flip(operator, "under_attack", pinned=True)
    assert response.status_code == 302
    row = MitigationState.objects.get()
    assert (row.mode, row.pinned, row.changed_by.email) == ("under_attack", True, "root@example.com")
    change = ModeChange.objects.get()
    assert (change.from_mode, change.to_mode, change.source, change.reason) == (
        "normal", "under_attack", "operator", "flood from AS64500")
    assert redis_client.get(state.MODE_KEY) == b"under_attack"  # mirrored for every process


def test_a_mode_change_without_a_reason_is_refused(operator):
    response = flip(operator, "elevated", reason="")
    assert response.status_code == 200 and b"This field is required" in response.content
    assert MitigationState.objects.get().mode == "normal" and not ModeChange.objects.exists()


def test_the_admin_list_goes_straight_to_the_one_switch(operator):
    response = operator.get("/admin/shield/mitigationstate/")
    assert response.status_code == 302 and response["Location"].endswith(CHANGE_URL)


def test_the_site_shows_a_banner_in_elevated_and_under_attack_only(client, django_capture_on_commit_callbacks):
    assert b'class="banner"' not in client.get("/").content
    for mode, words in [("elevated", b"unusual traffic"), ("under_attack", b"registration may be busy")]:
        with django_capture_on_commit_callbacks(execute=True):
            services.set_mode(mode, reason="test")
        state.forget()
        assert words in client.get("/").content


def wrong_nonce(challenge: str) -> str:
    bits = int(challenge.split(".")[1])
    return next(str(n) for n in range(1000)
                if pow.leading_zero_bits(hashlib.sha256(f"{challenge}:{n}".encode()).digest()) < bits)


def test_under_attack_signup_is_busy_but_the_trickle_and_login_and_the_api_keep_working(
        client, settings, django_capture_on_commit_callbacks):
    settings.SHIELD_SIGNUP_TRICKLE_PER_MINUTE = 2
    settings.SHIELD_POW_BITS = {**settings.SHIELD_POW_BITS, "under_attack": 8}  # keep the test fast
    user = ada()
    _, raw_key = create_api_key(user, name="prod")
    with django_capture_on_commit_callbacks(execute=True):
        services.set_mode("under_attack", reason="test", pinned=True)
    state.forget()

    def attempt(n, solve=True):
        page = client.get(reverse("signup"))
        if page.status_code == 503:
            return page
        challenge = page.context["pow_challenge"]
        return client.post(reverse("signup"), {
            "email": f"person{n}@example.org", "password": PASSWORD, "pow_challenge": challenge,
            "pow_nonce": pow.solve(challenge) if solve else wrong_nonce(challenge)}, REMOTE_ADDR=f"203.0.{n}.9")

    # Without the hard proof of work: busy, and the trickle is not spent on it.
    unsolved = attempt(1, solve=False)
    assert unsolved.status_code == 503 and b"Registration is busy" in unsolved.content
    assert int(unsolved["Retry-After"]) > 0
    # The trickle: two per minute with a solved challenge, then busy for everyone.
    assert [attempt(n).status_code for n in range(2, 6)] == [302, 302, 503, 503]
    busy_page = client.get(reverse("signup"))
    assert busy_page.status_code == 503 and b"Registration is busy" in busy_page.content

    # Registered users log in normally, and API keys authenticate.
    assert client.post(reverse("login"), {"username": "ada@example.com", "password": PASSWORD}).status_code == 302
    client.logout()
    assert client.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw_key}").status_code == 200
    # A completion through the API under attack, on a real stack: tests/e2e/test_under_attack.py.


def floors(settings, **per_mode):
    settings.SHIELD_ESCALATION_FLOORS = {
        "elevated": {"signup": 3, "failed_login": 1000, "refused": 1000, "lag_ms": 10**6, **per_mode.get("elevated", {})},
        "under_attack": {"failed_login": 6, "refused": 1000, "lag_ms": 10**6, **per_mode.get("under_attack", {})}}


def test_rising_rates_raise_the_mode_and_calm_lowers_it_one_step_after_the_cool_down(settings):
    floors(settings)
    settings.SHIELD_AUTO_COOLDOWN = 0
    for _ in range(3):
        stats.count("signup")
    assert tasks.evaluate_mode() == "elevated"
    for _ in range(6):
        stats.count("failed_login")
    assert tasks.evaluate_mode() == "under_attack"
    assert ModeChange.objects.filter(source="automatic").count() == 2
    assert "failed login" in ModeChange.objects.first().reason
    # Nothing calms down while the rates stay high ...
    assert tasks.evaluate_mode() is None
    # ... and once they fall (simulated by raising the floors), it steps down one level at a time.
    floors(settings, elevated={"signup": 1000}, under_attack={"failed_login": 1000})
    assert tasks.evaluate_mode() == "elevated"
    assert tasks.evaluate_mode() == "normal"


def test_sign_ups_alone_never_close_registration(settings):
    """A launch-day spike of real sign-ups: elevated (a proof of work for new browsers), never under_attack."""
    floors(settings)
    for _ in range(500):
        stats.count("signup")
    assert tasks.evaluate_mode() == "elevated"
    assert tasks.evaluate_mode() is None
    assert MitigationState.objects.get().mode == "elevated"


def test_the_cool_down_holds_the_mode_until_it_has_passed(settings):
    floors(settings, elevated={"signup": 1})
    stats.count("signup")
    assert tasks.evaluate_mode() == "elevated"
    floors(settings, elevated={"signup": 1000})
    assert tasks.evaluate_mode() is None  # default cool-down: minutes of calm first
    assert MitigationState.objects.get().mode == "elevated"


def test_an_operator_pin_overrides_the_automation(settings):
    floors(settings, elevated={"signup": 1}, under_attack={"failed_login": 1})
    settings.SHIELD_AUTO_COOLDOWN = 0
    services.set_mode("normal", reason="we know: a marketing launch", pinned=True, by=None)
    for _ in range(5):
        stats.count("signup")
        stats.count("failed_login")
    assert tasks.evaluate_mode() is None
    assert MitigationState.objects.get().mode == "normal"
    services.set_mode("under_attack", reason="manual, pinned", pinned=True)
    floors(settings, elevated={"signup": 1000}, under_attack={"failed_login": 1000})
    assert tasks.evaluate_mode() is None
    assert MitigationState.objects.get().mode == "under_attack"


def test_the_beat_task_has_a_stable_name_on_the_platform_queue(settings):
    assert tasks.evaluate_mode_task.name == "levee.shield.evaluate_mode"
    entry = settings.CELERY_BEAT_SCHEDULE["shield-evaluate-mode"]
    assert entry["task"] == "levee.shield.evaluate_mode" and entry["options"]["queue"] == "platform"


def test_without_its_redis_mirror_a_process_reads_the_mode_from_the_database(redis_client):
    services.set_mode("elevated", reason="test")  # on_commit never runs here: the mirror is stale
    redis_client.delete(state.MODE_KEY)
    state.forget()
    assert state.current_mode() == "elevated"
    assert redis_client.get(state.MODE_KEY) == b"elevated"  # and re-mirrors it


def test_mode_details_name_who_set_it_and_why():
    operator = root()
    services.set_mode("elevated", reason="signups x10", by=operator, pinned=True)
    details = services.mode_details()
    assert details["mode"] == "elevated" and details["set_by"] == "root@example.com"
    assert details["reason"] == "signups x10" and details["pinned"] is True and details["set_at"]
