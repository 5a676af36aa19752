"""A mode flipped in admin changes what ANOTHER server process does within a second: a real
gunicorn + uvicorn worker on a free loopback port, on the same test database and Redis."""
import time

import httpx
import pytest

from tests.personas import root
from tests.platform.shield.servers import server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

@pytest.fixture
def second_server():
    with server(SHIELD_SIGNUP_TRICKLE_PER_MINUTE=0) as base:
        yield base


def seconds_until(url: str, status: int, limit: float = 3.0) -> float:
    start = time.monotonic()
    with httpx.Client(timeout=1) as http:
        while time.monotonic() - start < limit:
            if http.get(url).status_code == status:
                return time.monotonic() - start
            time.sleep(0.02)
    return float("inf")


def test_flipping_the_mode_in_admin_changes_a_second_process_within_a_second(client, second_server):
    client.force_login(root())
    signup_url = f"{second_server}/accounts/signup/"
    assert httpx.get(signup_url).status_code == 200

    response = client.post("/admin/shield/mitigationstate/1/change/",
                           {"mode": "under_attack", "change_reason": "drill: flood from AS64500"})
    assert response.status_code == 302
    took = seconds_until(signup_url, 503)
    print(f"\nsecond process refused sign-up {took * 1000:.0f} ms after the admin flip")
    assert took < 1.0, took
    page = httpx.get(signup_url)
    assert "Registration is busy" in page.text and page.headers["retry-after"]

    client.post("/admin/shield/mitigationstate/1/change/", {"mode": "normal", "change_reason": "drill over"})
    took = seconds_until(signup_url, 200)
    print(f"second process reopened sign-up {took * 1000:.0f} ms after the flip back")
    assert took < 1.0, took
