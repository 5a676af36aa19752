from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from levee.accounts.services import find_user, sign_up, verification_token, verify_email
from levee.billing import services
from levee.billing.models import Grant, LedgerEntry, LedgerKind, Wallet
from tests.personas import ada
from tests.platform.billing.conftest import MODEL, fund

pytestmark = pytest.mark.django_db


def _sign_up(settings, email="new@example.com"):
    sign_up(email, "a long enough passphrase 7")
    user = find_user(email)
    assert not Wallet.objects.filter(user=user).exists() or Wallet.objects.get(user=user).granted_nano == 0
    return user


def test_an_unverified_account_gets_no_signup_credit(settings, django_capture_on_commit_callbacks):
    settings.LEVEE_SIGNUP_CREDIT = "0.50"
    with django_capture_on_commit_callbacks(execute=True):
        user = _sign_up(settings)
    assert len(mail.outbox) == 1
    assert not Grant.objects.filter(wallet__user=user).exists()
    assert services.balance_view(user)["balance_infos"][0]["granted_balance"] == "0.00"


def test_verification_grants_the_signup_credit_once_with_its_expiry(settings):
    settings.LEVEE_SIGNUP_CREDIT = "0.50"
    settings.LEVEE_SIGNUP_CREDIT_EXPIRY_DAYS = 30
    user = _sign_up(settings)
    token = verification_token(user)
    verify_email(token)
    verify_email(token)  # a second click sends no second signal and grants nothing more
    g = Grant.objects.get(wallet__user=user)
    assert g.amount_nano == 500_000_000 and g.key == "signup"
    assert timedelta(days=29) < g.expires_at - timezone.now() <= timedelta(days=30)
    assert Wallet.objects.get(user=user).granted_nano == 500_000_000
    assert services.reconcile() == []


def test_a_zero_signup_credit_grants_nothing(settings):
    settings.LEVEE_SIGNUP_CREDIT = "0"
    user = _sign_up(settings)
    verify_email(verification_token(user))
    assert not Grant.objects.exists()


def test_a_bad_signup_credit_setting_fails_loudly_at_start_up(settings):
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    settings.LEVEE_SIGNUP_CREDIT = "ten dollars"
    with pytest.raises(ImproperlyConfigured, match="LEVEE_SIGNUP_CREDIT"):
        apps.get_app_config("billing").ready()
    settings.LEVEE_SIGNUP_CREDIT = "0"
    settings.LEVEE_CURRENCY = "dollars"
    with pytest.raises(ImproperlyConfigured, match="LEVEE_CURRENCY"):
        apps.get_app_config("billing").ready()


def test_an_expired_grant_leaves_the_balance_through_a_ledger_entry():
    user = ada()
    fund(user, 1000)
    g = services.grant(user, 700, reason="promo", expires_at=timezone.now() - timedelta(seconds=1))
    services.grant(user, 300, reason="still good", expires_at=timezone.now() + timedelta(days=1))
    from levee.billing.tasks import expire_grants

    assert expire_grants.apply().get() == 1
    assert expire_grants.apply().get() == 0
    wallet = Wallet.objects.get(user=user)
    assert (wallet.granted_nano, wallet.topped_up_nano) == (300, 1000)
    entry = LedgerEntry.objects.get(kind=LedgerKind.EXPIRY)
    assert entry.granted_delta == -700 and entry.grant == g
    assert services.reconcile() == []


def test_expiry_leaves_money_that_open_holds_reserve_until_they_close(prices):
    user = ada()
    g = services.grant(user, 1_000_000, reason="promo", expires_at=timezone.now() + timedelta(hours=1))
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=0, max_tokens=1000, request_id="r",
                               deadline=timezone.now() + timedelta(minutes=1))  # 420_000 held
    later = timezone.now() + timedelta(hours=2)
    services.expire_grants(now=later)
    assert Wallet.objects.get(user=user).granted_nano == 420_000
    services.settle_hold(hold.pk, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=0, completion_tokens=100,
                         started_at=timezone.now(), finished_at=timezone.now())
    services.expire_grants(now=later)
    g.refresh_from_db()
    assert g.remaining_nano == 0 and Wallet.objects.get(user=user).granted_nano == 0
    assert services.reconcile() == []


def test_expiry_never_takes_granted_money_that_open_holds_will_be_charged_from(prices):
    """Holds draw from the granted balance first: with a paid top-up beside the grant, expiry must
    leave what is held in the grant, or the charge would fall on the paid money."""
    user = ada()
    fund(user, 10_000_000)
    g = services.grant(user, 1_000_000, reason="promo", expires_at=timezone.now() + timedelta(hours=1))
    hold = services.place_hold(user=user, model=MODEL, prompt_tokens=0, max_tokens=1000, request_id="r",
                               deadline=timezone.now() + timedelta(minutes=1))  # 420_000 held
    later = timezone.now() + timedelta(hours=2)
    assert services.expire_grants(now=later) == 1
    wallet = Wallet.objects.get(user=user)
    assert (wallet.granted_nano, wallet.topped_up_nano) == (420_000, 10_000_000)  # granted − held expired
    usage = services.settle_hold(hold.pk, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=0,
                                 completion_tokens=1000, started_at=timezone.now(), finished_at=timezone.now())
    wallet.refresh_from_db()
    assert usage.cost_nano == 420_000
    assert (wallet.granted_nano, wallet.topped_up_nano) == (0, 10_000_000)  # the paid money is untouched
    g.refresh_from_db()
    assert g.remaining_nano == 0 and services.expire_grants(now=later) == 0
    assert services.reconcile() == []
