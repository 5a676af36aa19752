"""Sign-up that cannot be farmed, and every door guarded: no account row or mail before the proof of
work and the limits pass; mail capped per recipient and domain; the admin login behind the login
guard (tighter); password reset limited, mailed from the worker, ending sessions and keys."""
import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from levee.accounts.models import User
from levee.keys.models import ApiKey
from levee.keys.services import create_api_key
from levee.shield import pow, stats
from tests.personas import PASSWORD, ada, make_user

pytestmark = pytest.mark.django_db


def _form_challenge(client, ip: str) -> str:
    return client.get(reverse("signup"), REMOTE_ADDR=ip).context["pow_challenge"]


@pytest.mark.signup_pow
def test_no_account_row_and_no_mail_without_the_proof_of_work(client, django_capture_on_commit_callbacks):
    """Normal mode too asks for a (light) proof of work: an unsolved post writes nothing, sends
    nothing and is not counted as a sign-up attempt for escalation; a solved one is."""
    ip = "198.51.100.20"
    page = client.get(reverse("signup"), REMOTE_ADDR=ip)
    assert page.context["pow_bits"] >= 8 and b"levee/pow.js" in page.content
    before = stats.per_minute("signup")
    with django_capture_on_commit_callbacks(execute=True):
        for nonce in ("", "0", "12345"):
            refused = client.post(reverse("signup"), {"email": "farm@example.com", "password": PASSWORD,
                                                      "pow_challenge": page.context["pow_challenge"],
                                                      "pow_nonce": nonce}, REMOTE_ADDR=ip)
            assert refused.status_code == 400
        assert client.post(reverse("signup"), {"email": "farm@example.com", "password": PASSWORD},
                           REMOTE_ADDR=ip).status_code == 400
    assert not User.objects.exists() and not mail.outbox
    assert stats.per_minute("signup") == before  # unsolved attempts do not move the mode

    challenge = _form_challenge(client, ip)
    with django_capture_on_commit_callbacks(execute=True):
        solved = client.post(reverse("signup"), {"email": "real@example.com", "password": PASSWORD,
                                                 "pow_challenge": challenge, "pow_nonce": pow.solve(challenge)},
                             REMOTE_ADDR=ip)
    assert solved.status_code == 302
    assert list(User.objects.values_list("email", flat=True)) == ["real@example.com"]
    assert [m.to for m in mail.outbox] == [["real@example.com"]]
    assert stats.per_minute("signup") == before + 1


def _sign_up(client, email: str, ip: str):
    return client.post(reverse("signup"), {"email": email, "password": PASSWORD}, REMOTE_ADDR=ip)


def test_verification_mail_is_capped_per_recipient(client, settings, django_capture_on_commit_callbacks):
    """The form is not a mail cannon: after the day's cap an address (in any of its +tag or case
    spellings) gets no more mail and no account, whichever address the request comes from."""
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "mail.recipient": {"requests": (2, 86400)}}
    ada()  # an existing account: its "someone tried" notices count like verification mails
    with django_capture_on_commit_callbacks(execute=True):
        codes = [_sign_up(client, spelling, f"203.0.113.{n}").status_code
                 for n, spelling in enumerate(["ada@example.com", "Ada+1@example.com", "ADA+2@Example.com"])]
        assert codes == [302, 302, 400]
        new = [_sign_up(client, spelling, f"192.0.2.{n}") for n, spelling in
               enumerate(["victim@example.org", "victim+a@example.org", "victim+b@example.org"])]
    # The first made the account and mailed its link, the second mailed "someone tried".
    assert [r.status_code for r in new] == [302, 302, 400]
    assert b"as many messages as we send in a day" in new[-1].content
    assert User.objects.filter(email__istartswith="victim").count() == 1
    assert sorted(m.to[0] for m in mail.outbox) == ["ada@example.com"] * 2 + ["victim@example.org"] * 2


def test_verification_mail_is_capped_per_domain(client, settings, django_capture_on_commit_callbacks):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "mail.domain": {"requests": (3, 86400)}}
    with django_capture_on_commit_callbacks(execute=True):
        codes = [_sign_up(client, f"staff{n}@corp.example", f"198.51.100.{n}").status_code for n in range(5)]
        other = _sign_up(client, "someone@elsewhere.example", "198.51.100.99").status_code
    assert codes == [302, 302, 302, 400, 400] and other == 302
    assert User.objects.filter(email__endswith="@corp.example").count() == 3
    assert len(mail.outbox) == 4


# --- the admin's door ----------------------------------------------------------------------------

def _admin_login(client, email, password, ip):
    return client.post("/admin/login/", {"username": email, "password": password, "next": "/admin/"},
                       REMOTE_ADDR=ip)


def test_the_admin_login_has_the_login_guard_and_tighter_tiers(client, settings):
    """Three failures cool the staff door off (the user door allows five); the same counters
    serve both doors, so a guesser cannot switch doors to start over."""
    settings.SHIELD_LOGIN_PAIR_TIERS = [(5, 60)]
    settings.SHIELD_ADMIN_LOGIN_PAIR_TIERS = [(3, 300)]
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "admin_login.global": {"requests": (100, 1)}}
    make_user("root@example.com", staff=True)
    attacker = "203.0.113.50"
    codes = [_admin_login(client, "root@example.com", "wrong-password", attacker).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    locked = _admin_login(client, "root@example.com", PASSWORD, attacker)
    assert locked.status_code == 429 and 60 < int(locked["Retry-After"]) <= 300
    user_door = client.post(reverse("login"), {"username": "root@example.com", "password": PASSWORD},
                            REMOTE_ADDR=attacker)
    assert user_door.status_code == 429  # the lock is on the (account, address), at either door
    # The owner, elsewhere, gets in.
    owner = Client()
    ok = _admin_login(owner, "root@example.com", PASSWORD, "198.51.100.7")
    assert ok.status_code == 302 and ok["Location"] == "/admin/"
    assert owner.get("/admin/").status_code == 200


def test_a_staff_account_gets_the_staff_tiers_at_the_user_door_too(client, settings):
    """Its session from /accounts/login/ opens the admin as well: guessing there must not be
    cheaper than at /admin/login/. Other accounts keep the user door's tiers."""
    settings.SHIELD_LOGIN_PAIR_TIERS = [(5, 60)]
    settings.SHIELD_ADMIN_LOGIN_PAIR_TIERS = [(3, 300)]
    make_user("root@example.com", staff=True)
    make_user("plain@example.com")
    attacker = "203.0.113.52"

    def guesses(email):
        return [client.post(reverse("login"), {"username": email, "password": "wrong-password"},
                            REMOTE_ADDR=attacker).status_code for _ in range(4)]

    assert guesses("root@example.com") == [200, 200, 200, 429]
    assert guesses("plain@example.com") == [200, 200, 200, 200]


def test_the_admin_login_has_its_own_smaller_attempt_budget(client, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "admin_login.address": {"requests": (2, 60)}}
    settings.SHIELD_ADMIN_LOGIN_PAIR_TIERS = [(100, 60)]
    codes = [_admin_login(client, f"x{n}@example.com", "wrong-password", "203.0.113.51").status_code
             for n in range(3)]
    assert codes == [200, 200, 429]
    # The user door's budget is its own.
    assert client.post(reverse("login"), {"username": "y@example.com", "password": "nope-nope"},
                       REMOTE_ADDR="203.0.113.51").status_code == 200


# --- password reset ------------------------------------------------------------------------------

def _reset(client, email, ip="198.51.100.30"):
    return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=ip)


def test_password_reset_is_queued_for_the_worker_not_sent_in_the_request(client, monkeypatch):
    from levee.accounts import tasks

    queued = []
    monkeypatch.setattr(tasks.send_password_reset, "delay", lambda *a, **kw: queued.append((a, kw)))
    ada()
    known, unknown = _reset(client, "ada@example.com"), _reset(client, "ghost@example.com")
    assert known.status_code == unknown.status_code == 302 and known["Location"] == unknown["Location"]
    assert not mail.outbox  # nothing looked up or sent while the client waits
    assert [a[0] for a, _ in queued] == ["ada@example.com", "ghost@example.com"]


def test_password_reset_is_limited_per_address(client, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "reset.address": {"requests": (2, 3600)}}
    ada()
    codes = [_reset(client, "ada@example.com", "203.0.113.60").status_code for _ in range(3)]
    assert codes == [302, 302, 429]
    assert len(mail.outbox) == 2
    assert _reset(client, "ada@example.com", "198.51.100.61").status_code == 302


def test_password_reset_mail_is_capped_per_recipient(client, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "mail.recipient": {"requests": (2, 86400)}}
    ada()
    codes = [_reset(client, "ada@example.com", f"203.0.113.{70 + n}").status_code for n in range(4)]
    assert codes == [302] * 4  # the answer never changes ...
    assert len(mail.outbox) == 2  # ... but the inbox gets the day's cap and no more


def test_a_password_reset_ends_other_sessions_and_revokes_api_keys(client):
    user = ada()
    create_api_key(user, name="one")
    create_api_key(user, name="two")
    elsewhere = Client()
    elsewhere.force_login(user)
    assert elsewhere.get(reverse("keys-page")).status_code == 200

    _reset(client, "ada@example.com")
    path = re.search(r"https?://[^/]+(/accounts/password/reset/\S+/\S+/)", mail.outbox[0].body).group(1)
    set_url = client.get(path, follow=True).redirect_chain[-1][0]
    new = "a brand new passphrase 42"
    done = client.post(set_url, {"new_password1": new, "new_password2": new}, follow=True)
    assert done.status_code == 200 and b"2 API keys were revoked" in done.content
    assert not ApiKey.objects.filter(user=user, revoked_at__isnull=True).exists()
    # The other browser's session is over.
    assert elsewhere.get(reverse("keys-page")).status_code == 302
