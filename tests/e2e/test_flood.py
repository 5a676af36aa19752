"""A small flood (ops/flood.py) against a real stack in under_attack: gunicorn (two workers), a Celery
platform worker and an inference worker on the small random-weight checkpoint. While bots flood
sign-up and login from spoofed addresses, legitimate users log in, chat in the web chat and call
POST /v1/chat/completions, and each of those must succeed (the reply completed) at least 99 % of
the time; bot sign-ups stay within the trickle. Bigger runs: docs/benchmarks.md (Flood)."""
import math
import os

import pytest

from levee.accounts.models import User
from levee.api.models import LlmModel
from levee.billing import services as billing
from levee.keys.services import create_api_key
from ops import flood
from tests.e2e.stack import MODEL, Stack
from tests.personas import PASSWORD, make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.real_hasher]

SECONDS = float(os.environ.get("LEVEE_FLOOD_SECONDS", "12"))
BOTS = int(os.environ.get("LEVEE_FLOOD_BOTS", "6"))
USERS = int(os.environ.get("LEVEE_FLOOD_USERS", "4"))
NEW_DEVICE_LOGINS_PER_MINUTE = int(os.environ.get("LEVEE_FLOOD_NEW_DEVICE_PER_MINUTE", "20"))
TRICKLE = 3
REPLY_TOKENS = 8  # random weights never stop early: every reply runs to its max_tokens


def test_it_refuses_a_non_loopback_target():
    with pytest.raises(SystemExit, match="non-loopback"):
        flood.require_loopback("http://192.0.2.1:8000")
    flood.require_loopback("http://127.0.0.1:8000")
    flood.require_loopback("http://[::1]:8000")


@pytest.fixture
def flood_stack(django_db_setup, checkpoint, seeded_catalogue):
    # The web chat has no max_tokens of its own: its replies take the model's default.
    LlmModel.objects.filter(name=MODEL).update(default_max_tokens=REPLY_TOKENS)
    running = Stack(redis_offset=2, extra_env={
        "LEVEE_CHECKPOINT": str(checkpoint), "WEB_CONCURRENCY": "2", "TRUSTED_PROXY_CIDRS": "127.0.0.1/32",
        "SHIELD_SIGNUP_TRICKLE_PER_MINUTE": str(TRICKLE), "SHIELD_POW_BITS_UNDER_ATTACK": "12",
        "SHIELD_LOGIN_NEW_DEVICE_PER_MINUTE": str(NEW_DEVICE_LOGINS_PER_MINUTE)})
    running.start()
    yield running
    running.stop()


def test_legitimate_users_log_in_chat_and_call_the_api_through_a_flood_and_bots_get_the_trickle_at_most(
        flood_stack, settings):
    legit = []
    for n in range(USERS):
        user = make_user(f"person{n}@example.com")
        billing.topup(billing.wallet_for(user), 10**9, source="test", external_id=f"flood-{n}")
        _, raw = create_api_key(user, name="flood")
        legit.append(flood.Legit(user.email, PASSWORD, raw, address=f"192.0.2.{10 + n}"))
    flood_stack.set_mode(settings, "under_attack", reason="flood drill")
    try:
        report = flood.run(flood_stack.url, seconds=SECONDS, bots=BOTS, solver_bots=1, legit=legit,
                           max_requests=20_000, model=MODEL, max_tokens=REPLY_TOKENS)
    finally:
        flood_stack.set_mode(settings, "normal", reason="flood drill over")
    summary = report.summary()
    print("\nflood:", summary)

    kinds = summary["legit_by_kind"]
    # Every person got turns (how many depends on the CPU left over on a loaded 2-core box); chat and
    # API calls alternate per person, so both happened.
    assert summary["legit_attempts"] >= USERS * 2, summary
    assert kinds["chat"]["attempts"] >= 1 and kinds["api"]["attempts"] >= 1, summary
    for kind, stats in kinds.items():
        if stats["attempts"]:
            assert stats["success_rate"] >= 0.99, (kind, summary)
    bots_in_db = User.objects.filter(email__endswith="@flood.example").count()  # the truth, timeouts included
    # GCRA lets a full minute's trickle through at once, then one every 60/TRICKLE seconds.
    assert bots_in_db <= TRICKLE + math.ceil(SECONDS * TRICKLE / 60), summary
    assert summary["bot_requests"] > 0
