"""Sign-up defences: rates per address and subnet, canonical duplicates, disposable domains, the
honeypot, and the proof of work (replayed, expired, forged, too easy and wrong solutions)."""
import pytest
from django.core import mail
from django.urls import reverse

from levee.accounts.models import User
from levee.shield import pow, services, state
from levee.shield.emails import canonical_email, is_disposable
from levee.shield.models import SignupIdentity
from tests.personas import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def sign_up(client, email, ip="198.51.100.10", **extra):
    return client.post(reverse("signup"), {"email": email, "password": PASSWORD, **extra}, REMOTE_ADDR=ip)


@pytest.mark.parametrize("raw, canonical", [
    ("Ada.Lovelace+newsletter@GoogleMail.com", "adalovelace@gmail.com"),
    ("a.d.a@gmail.com", "ada@gmail.com"),
    ("Ada+x@Example.com", "ada@example.com"),
    ("ada.l@example.com", "ada.l@example.com"),  # dots matter outside Gmail
])
def test_addresses_fold_to_one_canonical_form(raw, canonical):
    assert canonical_email(raw) == canonical


@pytest.mark.parametrize("email, disposable", [
    ("x@mailinator.com", True), ("x@sub.mailinator.com", True), ("x@MAILINATOR.COM", True),
    ("x@example.com", False), ("x@gmail.com", False),
])
def test_disposable_domains_are_matched_on_the_registrable_domain(email, disposable):
    assert is_disposable(email) is disposable


def test_a_disposable_address_is_refused_with_a_plain_reason(client):
    response = sign_up(client, "someone@sub.mailinator.com")
    assert response.status_code == 400 and b"disposable" in response.content
    assert not User.objects.exists()


def test_a_gmail_variant_of_an_existing_account_looks_like_any_sign_up_but_creates_nothing(
        client, django_capture_on_commit_callbacks):
    make_user("ada.lovelace@gmail.com")
    with django_capture_on_commit_callbacks(execute=True):
        twin = sign_up(client, "AdaLovelace+2@googlemail.com")
    with django_capture_on_commit_callbacks(execute=True):
        fresh = sign_up(client, "grace@example.com", ip="198.51.100.11")
    assert twin.status_code == fresh.status_code == 302 and twin["Location"] == fresh["Location"]
    assert User.objects.count() == 2
    assert "already has one" in mail.outbox[0].body and mail.outbox[0].to == ["ada.lovelace@gmail.com"]
    assert SignupIdentity.objects.filter(canonical_email="grace@example.com").exists()


def test_every_way_an_account_is_made_or_readdressed_records_its_canonical_form(admin_client):
    from django.core.management import call_command

    from levee.accounts.services import create_user

    create_user("Op.Made+x@example.com", None)
    call_command("createsuperuser", email="root@example.com", interactive=False, verbosity=0)
    added = admin_client.post(reverse("admin:accounts_user_add"), {
        "email": "A.Dded@GMail.com", "password1": PASSWORD, "password2": PASSWORD})
    assert added.status_code == 302, added.content[:500]
    holders = dict(SignupIdentity.objects.values_list("canonical_email", "user__email"))
    assert holders["op.made@example.com"] == "Op.Made+x@example.com"
    assert holders["root@example.com"] == "root@example.com"
    assert holders["added@gmail.com"].lower() == "a.dded@gmail.com"
    # An operator changes an address in the admin: the canonical form moves with it, so the old
    # address's look-alikes may sign up again and the new one's may not.
    user = User.objects.get(email__iexact="a.dded@gmail.com")
    changed = admin_client.post(reverse("admin:accounts_user_change", args=[user.pk]), {
        "email": "moved@example.com", "is_active": "on", "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01", "initial-date_joined_1": "00:00:00"})
    assert changed.status_code == 302, changed.content[:800]
    assert SignupIdentity.objects.get(user=user).canonical_email == "moved@example.com"


def test_the_honeypot_answers_like_success_and_creates_nothing(client):
    response = sign_up(client, "bot@example.com", website="http://spam.example")
    assert response.status_code == 302 and response["Location"] == reverse("signup-sent")
    assert not User.objects.exists()


def test_sign_ups_are_limited_per_address_and_per_subnet(client, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "signup.address": {"requests": (2, 3600)},
                              "signup.subnet": {"requests": (3, 3600)}}
    codes = [sign_up(client, f"p{i}@example.com", ip="192.0.2.1").status_code for i in range(3)]
    assert codes == [302, 302, 429]
    # A neighbour in the same /24 shares the subnet's allowance (3): one more, then refused.
    assert [sign_up(client, f"q{i}@example.com", ip="192.0.2.77").status_code for i in range(2)] == [302, 429]
    # Another subnet is unaffected.
    assert sign_up(client, "r@example.com", ip="192.0.3.1").status_code == 302
    refused = sign_up(client, "s@example.com", ip="192.0.2.1")
    assert b"Slow down" in refused.content and int(refused["Retry-After"]) > 0


def test_ipv6_clients_share_their_64(client, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "signup.address": {"requests": (100, 3600)},
                              "signup.subnet": {"requests": (1, 3600)}}
    assert sign_up(client, "v6a@example.com", ip="2001:db8:1:2::1").status_code == 302
    assert sign_up(client, "v6b@example.com", ip="2001:db8:1:2:ffff::9").status_code == 429
    assert sign_up(client, "v6c@example.com", ip="2001:db8:1:3::1").status_code == 302


# --- proof of work ------------------------------------------------------------------------------

@pytest.fixture
def elevated(settings, django_capture_on_commit_callbacks):
    settings.SHIELD_POW_BITS = {"normal": 0, "elevated": 8, "under_attack": 12}
    with django_capture_on_commit_callbacks(execute=True):
        services.set_mode("elevated", reason="test")
    state.forget()


def test_a_solved_challenge_is_accepted_once(redis_client):
    challenge = pow.issue(8)
    nonce = pow.solve(challenge)
    pow.verify(challenge, nonce, required_bits=8)
    with pytest.raises(pow.PowRefused, match="replayed"):
        pow.verify(challenge, nonce, required_bits=8)


def test_an_expired_challenge_is_refused(redis_client):
    challenge = pow.issue(4, ttl=-1)
    with pytest.raises(pow.PowRefused, match="expired"):
        pow.verify(challenge, pow.solve(challenge), required_bits=4)


def test_a_forged_challenge_is_refused(redis_client):
    challenge = pow.issue(16)
    cid, _bits, expires, sig = challenge.split(".")
    easier = f"{cid}.1.{expires}.{sig}"  # lower the difficulty, keep the signature
    with pytest.raises(pow.PowRefused, match="forged"):
        pow.verify(easier, pow.solve(easier), required_bits=1)
    later = f"{cid}.16.{int(expires) + 86400}.{sig}"
    with pytest.raises(pow.PowRefused, match="forged"):
        pow.verify(later, "0", required_bits=1)


def test_a_too_easy_challenge_is_refused_when_the_mode_asks_for_more(redis_client):
    challenge = pow.issue(4)  # issued in a calmer mode
    with pytest.raises(pow.PowRefused, match="too easy"):
        pow.verify(challenge, pow.solve(challenge), required_bits=12)


def test_a_wrong_solution_is_refused_and_does_not_spend_the_challenge(redis_client):
    challenge = pow.issue(12)
    good = pow.solve(challenge)
    wrong = next(str(n) for n in range(10_000) if str(n) != good and
                 pow.leading_zero_bits(__import__("hashlib").sha256(f"{challenge}:{n}".encode()).digest()) < 12)
    with pytest.raises(pow.PowRefused, match="wrong"):
        pow.verify(challenge, wrong, required_bits=12)
    pow.verify(challenge, good, required_bits=12)


def test_elevated_sign_up_needs_the_browsers_proof_of_work(client, elevated):
    page = client.get(reverse("signup"))
    assert page.context["pow_bits"] == 8 and b"levee/pow.js" in page.content
    challenge = page.context["pow_challenge"]
    missing = sign_up(client, "nopow@example.com")
    assert missing.status_code == 400 and b"did not complete" in missing.content
    solved = sign_up(client, "pow@example.com", pow_challenge=challenge, pow_nonce=pow.solve(challenge))
    assert solved.status_code == 302
    replayed = sign_up(client, "pow2@example.com", pow_challenge=challenge, pow_nonce=pow.solve(challenge))
    assert replayed.status_code == 400
    assert list(User.objects.values_list("email", flat=True)) == ["pow@example.com"]


def test_the_javascript_solver_matches_the_servers_check():
    # The browser counts leading zero bits with Math.clz32 over the digest bytes; this is the same rule.
    assert pow.leading_zero_bits(bytes([0, 0, 0b00010000]) + bytes(29)) == 19
    assert pow.leading_zero_bits(bytes([0b10000000]) + bytes(31)) == 0



def test_elevated_mode_quarters_the_subnet_allowance(client, settings, elevated):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS, "signup.address": {"requests": (100, 3600)},
                              "signup.subnet": {"requests": (8, 3600)}}

    def attempt(n):
        challenge = client.get(reverse("signup")).context["pow_challenge"]
        return sign_up(client, f"e{n}@example.com", ip=f"192.0.2.{n + 1}", pow_challenge=challenge,
                       pow_nonce=pow.solve(challenge)).status_code

    assert [attempt(n) for n in range(3)] == [302, 302, 429]  # 8 / 4 = 2 for the /24


def test_a_look_alike_that_wins_a_race_still_leaves_one_account(client, monkeypatch, django_capture_on_commit_callbacks):
    make_user("ada@gmail.com")
    # The twin committed after this sign-up looked for it: the check saw nothing ...
    monkeypatch.setattr("levee.shield.emails.find_canonical_twin", lambda email: None)
    with django_capture_on_commit_callbacks(execute=True):
        response = sign_up(client, "a.d.a@gmail.com")
    assert response.status_code == 302
    # ... but the canonical form is unique, so the new account was rolled back.
    assert list(User.objects.values_list("email", flat=True)) == ["ada@gmail.com"]
