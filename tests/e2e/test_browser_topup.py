"""A top-up in a real browser (Debian's chromium through Playwright) against a real web server: from
the usage page through the Stripe stand-in's hosted checkout page (tests/stripe_standin.py, the
real `stripe` library on Levee's side) and back to a credited balance, with the receipt mailed."""
from __future__ import annotations

import time

import pytest

from levee.billing.models import LedgerEntry, Payment
from tests.e2e.stack import Stack
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, browser, log_in, shot  # noqa: F401 - browser is a fixture
from tests.personas import make_user
from tests.stripe_standin import StripeStandin

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.real_hasher,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make browser)"),
]

SECRET_KEY, WEBHOOK_SECRET = "sk_test_browser_standin", "whsec_browser_standin"


@pytest.fixture(scope="module")
def paying_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """The web server alone (a top-up needs no workers), its Stripe pointed at the stand-in."""
    standin = StripeStandin(api_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET).start()
    mail_dir = tmp_path_factory.mktemp("topup-mail")
    stack = Stack(redis_offset=3, extra_env={
        "STRIPE_API_BASE": standin.url, "STRIPE_SECRET_KEY": SECRET_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LEVEE_CURRENCY": "USD", "LEVEE_TOPUP_AMOUNTS": "5,20,50", "EMAIL_HOST": "", "EMAIL_FILE_PATH": str(mail_dir)})
    stack.redis.flushdb()
    stack.start_web()
    stack.wait_until(stack._web_up, "web server")
    standin.webhook_url = f"{stack.url}/billing/stripe/webhook"
    stack.standin, stack.mail_dir = standin, mail_dir
    yield stack
    stack.stop()
    standin.stop()


def test_a_top_up_from_the_usage_page_through_checkout_to_a_credited_balance(browser, paying_stack):  # noqa: F811
    user = make_user("payer@example.com")
    ctx = browser.new_context(base_url=paying_stack.url, viewport={"width": 1200, "height": 850})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    try:
        log_in(page, user.email)
        page.goto("/usage/")
        page.locator("#balance-total").wait_for()
        assert page.locator("#balance-total").inner_text() == "0.00 USD"
        page.get_by_label("20.00").check()
        shot(page, "topup-01-usage")
        page.get_by_role("button", name="Pay with card").click()

        # Stripe's (stand-in's) hosted page, on its own origin.
        page.wait_for_url(f"{paying_stack.standin.url}/c/pay/*")
        assert page.locator("#amount").inner_text() == "20.00 USD"
        shot(page, "topup-02-checkout")
        page.get_by_role("button", name="Pay 20.00 USD").click()

        # Back on Levee: the webhook was delivered before the redirect, so the balance is credited.
        page.wait_for_url(f"{paying_stack.url}/usage/topup/*")
        status = page.locator("#topup-status").inner_text()
        assert "20.00 USD was added to your balance" in status, status
        assert page.locator("#topup-balance").inner_text() == "20.00 USD"
        shot(page, "topup-03-result")
        page.get_by_role("link", name="Back to usage and billing").click()
        assert page.locator("#balance-total").inner_text() == "20.00 USD"
        assert page.locator("#balance-topped-up").inner_text() == "20.00 USD"
        assert "top-up via Stripe" in page.locator("#ledger").inner_text()
    finally:
        ctx.close()

    assert paying_stack.standin.deliveries == [("checkout.session.completed", 200)]
    payment = Payment.objects.get(user=user)
    assert payment.status == "credited"
    assert LedgerEntry.objects.filter(external_id=f"stripe:{payment.session_id}").count() == 1
    deadline = time.time() + 10
    while time.time() < deadline and not any("receipt" in p.read_text() for p in paying_stack.mail_dir.glob("*")):
        time.sleep(0.2)
    assert any(f"To: {user.email}" in p.read_text() and "receipt" in p.read_text()
               for p in paying_stack.mail_dir.glob("*")), list(paying_stack.mail_dir.glob("*"))
    assert ARTIFACTS.exists()
