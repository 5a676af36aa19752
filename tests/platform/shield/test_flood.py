"""A small flood (ops/flood.py) against a real server in under_attack: legitimate users keep
logging in and calling the API; bot sign-ups stay within the trickle. Bigger runs: docs/benchmarks.md."""
import math
import os

import pytest

from levee.accounts.models import User
from levee.keys.services import create_api_key
from levee.shield import services
from ops import flood
from tests.personas import PASSWORD, make_user
from tests.platform.shield.servers import server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.real_hasher]

SECONDS = float(os.environ.get("LEVEE_FLOOD_SECONDS", "12"))
BOTS = int(os.environ.get("LEVEE_FLOOD_BOTS", "6"))
USERS = int(os.environ.get("LEVEE_FLOOD_USERS", "4"))
NEW_DEVICE_LOGINS_PER_MINUTE = int(os.environ.get("LEVEE_FLOOD_NEW_DEVICE_PER_MINUTE", "20"))
TRICKLE = 3


def test_it_refuses_a_non_loopback_target():
    with pytest.raises(SystemExit, match="non-loopback"):
        flood.require_loopback("http://192.0.2.1:8000")
    flood.require_loopback("http://127.0.0.1:8000")
    flood.require_loopback("http://[::1]:8000")


def test_legitimate_users_get_through_a_flood_and_bots_get_the_trickle_at_most():
    legit = []
    for n in range(USERS):
        user = make_user(f"person{n}@example.com")
        _, raw = create_api_key(user, name="flood")
        legit.append(flood.Legit(user.email, PASSWORD, raw, address=f"192.0.2.{10 + n}"))
    services.set_mode("under_attack", reason="flood drill", pinned=True)

    with server(workers=2, TRUSTED_PROXY_CIDRS="127.0.0.1/32", SHIELD_SIGNUP_TRICKLE_PER_MINUTE=TRICKLE,
                SHIELD_POW_BITS_UNDER_ATTACK=12, SHIELD_LOGIN_NEW_DEVICE_PER_MINUTE=NEW_DEVICE_LOGINS_PER_MINUTE) as base:
        report = flood.run(base, seconds=SECONDS, bots=BOTS, solver_bots=1, legit=legit, max_requests=20_000)
    summary = report.summary()
    print("\nflood:", summary)

    # Every person got turns (how many depends on the CPU left over on a loaded 2-core box).
    assert summary["legit_attempts"] >= USERS * 2
    assert summary["legit_success_rate"] >= 0.99, summary
    bots_in_db = User.objects.filter(email__endswith="@flood.example").count()  # the truth, timeouts included
    # GCRA lets a full minute's trickle through at once, then one every 60/TRICKLE seconds.
    assert bots_in_db <= TRICKLE + math.ceil(SECONDS * TRICKLE / 60), summary
    assert summary["bot_requests"] > 0
