from datetime import timedelta

import pytest
from django.utils import timezone

from levee.billing import services
from levee.keys.services import create_api_key
from tests.personas import ada
from tests.platform.billing.conftest import MODEL, fund

pytestmark = pytest.mark.django_db


def _get(client, raw, path="/user/balance"):
    return client.get(path, HTTP_AUTHORIZATION=f"Bearer {raw}")


def test_the_balance_is_reported_in_deepseeks_shape_at_both_paths(client, prices):
    user = ada()
    _, raw = create_api_key(user, name="k")
    fund(user, 100_000_000_000)
    services.grant(user, 10_009_999_999, reason="promo", expires_at=None)
    for path in ("/user/balance", "/v1/user/balance"):
        response = _get(client, raw, path)
        assert response.status_code == 200
        assert response.json() == {"is_available": True, "balance_infos": [
            {"currency": "USD", "total_balance": "110.00", "granted_balance": "10.00", "topped_up_balance": "100.00"}]}


def test_balance_view_also_gives_exact_nano_figures_to_code(prices):
    user = ada()
    fund(user, 1_234_567_891)
    services.grant(user, 5, reason="promo", expires_at=None)
    view = services.balance_view(user)
    assert (view["total_nano"], view["granted_nano"], view["topped_up_nano"], view["available_nano"]) == (
        1_234_567_896, 5, 1_234_567_891, 1_234_567_896)


def test_an_account_with_nothing_available_is_not_available(client, prices):
    user = ada()
    _, raw = create_api_key(user, name="k")
    assert _get(client, raw).json()["is_available"] is False  # no wallet yet: zero, not an error
    fund(user, services.estimate_max_cost(MODEL, 10, 10))
    services.place_hold(user=user, model=MODEL, prompt_tokens=10, max_tokens=10, request_id="r",
                        deadline=timezone.now() + timedelta(minutes=1))
    body = _get(client, raw).json()
    assert body["is_available"] is False and body["balance_infos"][0]["total_balance"] == "0.00"


@pytest.mark.parametrize("header", [None, "Bearer sk-nope", "Basic abc", "Bearer "])
def test_the_balance_needs_a_valid_key(client, header):
    kwargs = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.get("/user/balance", **kwargs)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_logged_in_session_is_not_an_api_key(client):
    client.force_login(ada())
    assert client.get("/user/balance").status_code == 401
