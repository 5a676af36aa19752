import pytest


@pytest.fixture(autouse=True)
def _every_key_is_paid(settings):
    """The shield's own tests decide tiers themselves; billing's rule (topped-up money = paid) has
    its tests in tests/platform/billing/test_tiers.py."""
    settings.SHIELD_API_TIER = "levee.shield.tiers.default_api_tier"
