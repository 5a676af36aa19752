"""Login brute-force defence: tiered cool-offs per (account, address) and per address, a high
per-account ceiling that never locks out a browser the owner has used, and nothing that tells an
attacker whether an account exists."""
import re

import pytest
from django.urls import reverse

from levee.shield.login import KNOWN_DEVICE_COOKIE
from tests.personas import PASSWORD, ada

pytestmark = pytest.mark.django_db

ATTACKER, OWNER = "203.0.113.66", "198.51.100.5"


@pytest.fixture(autouse=True)
def tiers(settings):
    settings.SHIELD_LOGIN_PAIR_TIERS = [(3, 60), (5, 600)]
    settings.SHIELD_LOGIN_ADDRESS_TIERS = [(50, 300)]
    settings.SHIELD_LOGIN_ACCOUNT_TIERS = [(8, 900)]


def login(client, email, password, ip):
    return client.post(reverse("login"), {"username": email, "password": password}, REMOTE_ADDR=ip)


def test_failures_from_one_address_cool_it_off_in_tiers(client, redis_client):
    ada()
    codes = [login(client, "ada@example.com", "wrong-password", ATTACKER).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # the third failure starts a one-minute cool-off
    locked = login(client, "ada@example.com", PASSWORD, ATTACKER)  # even the right password waits
    assert locked.status_code == 429 and 0 < int(locked["Retry-After"]) <= 60
    assert b"Too many attempts" in locked.content
    # Past the first tier, the next failures lock for the second tier's ten minutes.
    lock_key = next(k for k in redis_client.keys("levee:login:{login.pair:*:lock"))
    for _ in range(2):
        redis_client.delete(lock_key)
        login(client, "ada@example.com", "wrong-password", ATTACKER)
    assert 60 < redis_client.ttl(lock_key) <= 600


def test_an_attacker_elsewhere_cannot_lock_the_owner_out(client):
    ada()
    for _ in range(6):
        login(client, "ada@example.com", "wrong-password", ATTACKER)
    assert login(client, "ada@example.com", PASSWORD, OWNER).status_code == 302


def test_the_account_ceiling_spares_a_browser_that_logged_in_before(client):
    ada()
    owner_browser = client
    assert login(owner_browser, "ada@example.com", PASSWORD, OWNER).status_code == 302
    known_device = owner_browser.cookies[KNOWN_DEVICE_COOKIE].value
    owner_browser.logout()  # the test client drops every cookie here; a browser keeps this one
    owner_browser.cookies[KNOWN_DEVICE_COOKIE] = known_device
    from django.test import Client

    botnet = Client()
    for n in range(8):  # eight addresses, two tries each: under the pair tier, over the ceiling (8)
        login(botnet, "ada@example.com", "wrong-password", f"203.0.113.{n}")
    # A stranger's browser from a fresh address is now held back by the ceiling ...
    assert login(Client(), "ada@example.com", PASSWORD, "192.0.2.200").status_code == 429
    # ... but the owner's own browser, from anywhere, is not.
    assert login(owner_browser, "ada@example.com", PASSWORD, "192.0.2.201").status_code == 302


def test_a_locked_out_answer_is_the_same_for_accounts_that_do_not_exist(client):
    ada()
    for _ in range(3):
        login(client, "ada@example.com", "wrong-password", ATTACKER)
        login(client, "nobody@example.com", "wrong-password", ATTACKER)
    real = login(client, "ada@example.com", "wrong-password", ATTACKER)
    ghost = login(client, "nobody@example.com", "wrong-password", ATTACKER)
    assert real.status_code == ghost.status_code == 429

    def strip(response):
        return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"|value="[^"]*@example.com"|\d+ seconds?',
                      "", response.content.decode())

    assert strip(real) == strip(ghost)


def test_many_accounts_tried_from_one_address_cool_that_address_off(client, settings):
    settings.SHIELD_LOGIN_ADDRESS_TIERS = [(4, 300)]
    for n in range(4):
        login(client, f"user{n}@example.com", "wrong-password", ATTACKER)
    assert login(client, "someone-else@example.com", "wrong-password", ATTACKER).status_code == 429
    ada()
    assert login(client, "ada@example.com", PASSWORD, OWNER).status_code == 302


def test_a_successful_login_clears_the_pairs_failures(client):
    ada()
    for _ in range(2):
        login(client, "ada@example.com", "wrong-password", OWNER)
    assert login(client, "ada@example.com", PASSWORD, OWNER).status_code == 302
    client.logout()
    for _ in range(2):
        assert login(client, "ada@example.com", "wrong-password", OWNER).status_code == 200


def test_an_ipv6_client_is_counted_by_its_64(client):
    """Hopping to another address of the same /64 does not reset the count; another /64 is someone else."""
    ada()
    codes = [login(client, "ada@example.com", "wrong-password", f"2001:db8:1:2::{n:x}").status_code
             for n in range(1, 5)]
    assert codes == [200, 200, 200, 429]
    assert login(client, "ada@example.com", "wrong-password", "2001:db8:1:2:ffff::9").status_code == 429
    assert login(client, "ada@example.com", PASSWORD, "2001:db8:1:3::1").status_code == 302


def test_an_ipv4_mapped_client_is_the_same_ipv4_client(client):
    ada()
    for ip in ("203.0.113.66", "::ffff:203.0.113.66", "203.0.113.66"):
        login(client, "ada@example.com", "wrong-password", ip)
    assert login(client, "ada@example.com", PASSWORD, "::ffff:203.0.113.66").status_code == 429
