import pytest


@pytest.fixture(autouse=True)
def _every_key_is_paid(monkeypatch):
    """The shield's own tests decide tiers themselves; billing's rule (topped-up money = paid) has
    its tests in tests/platform/billing/test_tiers.py."""
    monkeypatch.setattr("levee.shield.api.api_tier", lambda user, api_key: "paid_api")
