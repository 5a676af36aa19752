import pytest
from django.utils import timezone

from levee.billing import services as billing
from levee.billing.tiers import api_tier
from tests.personas import ada

pytestmark = pytest.mark.django_db


def test_an_account_with_topped_up_money_is_paid_api_traffic():
    user = ada()
    assert api_tier(user, None) == "free_api"  # no wallet yet
    billing.grant(user, 10**9, reason="welcome", expires_at=None)
    assert api_tier(user, None) == "free_api"  # free credit does not make a paying customer
    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id=f"t-{timezone.now().timestamp()}")
    assert api_tier(user, None) == "paid_api"
