"""Billing fixtures: a price list for a test model (so tests never depend on the seeded DeepSeek
rows, which transactional tests flush) and a way to put money in a wallet."""
from datetime import UTC, datetime

import pytest

from levee.billing.models import Price, TokenClass

MODEL = "test-chat"
LIST_FROM = datetime(2020, 1, 1, tzinfo=UTC)
# $0.028 / $0.28 / $0.42 per million tokens: DeepSeek's current list.
HIT, MISS, OUT = 28, 280, 420


def make_prices(model: str = MODEL, *, hit: int = HIT, miss: int = MISS, out: int = OUT, at: datetime = LIST_FROM,
                currency: str = "USD") -> dict[str, Price]:
    return {cls: Price.objects.get_or_create(model=model, token_class=cls, currency=currency, effective_from=at,
                                             defaults={"nano_per_token": nano})[0]
            for cls, nano in ((TokenClass.INPUT_CACHE_HIT, hit), (TokenClass.INPUT_CACHE_MISS, miss),
                              (TokenClass.OUTPUT, out))}


@pytest.fixture
def prices(db, settings):
    settings.LEVEE_CURRENCY = "USD"
    return make_prices()


def fund(user, nano: int):
    """Top the account up by `nano` through the operator path (ledger + audit)."""
    from levee.billing.services import adjust, wallet_for

    return adjust(wallet_for(user), nano, actor=None, reason="test funds", source="test")


@pytest.fixture(params=["one statement", "portable"])
def hold_path(request, monkeypatch):
    """place_hold sends its writes as one statement where the database has data-modifying WITH
    (PostgreSQL) and as a transaction where it has not (SQLite, `make run`): tests that take this
    fixture run both on PostgreSQL, the second by hiding the capability."""
    from levee.billing import services

    if request.param == "portable":
        monkeypatch.setattr(services, "_WRITABLE_WITH", set())
    return request.param
