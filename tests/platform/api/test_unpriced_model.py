"""A model without a price cannot be enabled in admin, and a request that meets one anyway (a price
row removed after it was enabled) is a 503 with a message in the API's format, never a 500."""
import time

import pytest
from django.core.exceptions import ValidationError

from inference import protocol
from levee.api.models import LlmModel
from levee.billing.models import Hold
from levee.keys.services import create_api_key
from tests.personas import ada, root
from tests.platform.billing.conftest import fund, make_prices


@pytest.mark.django_db
def test_a_model_without_a_price_cannot_be_enabled():
    model = LlmModel(name="unpriced-chat", enabled=True)
    with pytest.raises(ValidationError) as info:
        model.full_clean()
    assert "enabled" in info.value.message_dict and "no price" in info.value.message_dict["enabled"][0]
    LlmModel(name="unpriced-chat", enabled=False).full_clean()  # disabled: fine
    make_prices("unpriced-chat")
    LlmModel(name="unpriced-chat", enabled=True).full_clean()  # priced now: fine


@pytest.mark.django_db
def test_the_admin_form_refuses_to_enable_an_unpriced_model(client):
    client.force_login(root())
    response = client.post("/admin/api/llmmodel/add/", {
        "name": "unpriced-chat", "queue": "", "tokenizer_dir": "inference/demo/checkpoint", "context_length": 4096,
        "max_output": 2048, "default_max_tokens": 1024, "max_queue_depth": 256, "enabled": "on",
        "owned_by": "levee"})
    assert response.status_code == 200  # the form again, with the error
    assert b"has no price in force" in response.content
    assert not LlmModel.objects.filter(name="unpriced-chat").exists()


def test_a_request_for_an_enabled_model_without_a_price_is_a_503_with_a_message(client, transactional_db,
                                                                               redis_client, settings):
    settings.LEVEE_CURRENCY = "USD"
    LlmModel.objects.create(name="unpriced-chat", enabled=True)  # as if its prices were removed after
    user = ada()
    fund(user, 10**12)
    _, raw = create_api_key(user, name="t")
    redis_client.zadd(protocol.workers_key("unpriced-chat"), {"gpu-1:7": time.time()})
    response = client.post("/v1/chat/completions", {"model": "unpriced-chat",
                                                    "messages": [{"role": "user", "content": "hi"}]},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 503
    error = response.json()["error"]
    assert "no price" in error["message"] and error["type"]
    assert response["Retry-After"]
    assert not Hold.objects.exists() and not redis_client.llen(protocol.queue_name("unpriced-chat"))


def test_the_database_going_away_mid_request_is_a_503_not_a_500(client, transactional_db, monkeypatch):
    """Seen in the chaos run (ops/chaos.py): a PostgreSQL restart made key authentication raise
    OperationalError, which left as a 500."""
    from django.db import OperationalError

    from levee.keys import services as keys

    def shutting_down(raw):
        raise OperationalError("FATAL: the database system is shutting down")

    monkeypatch.setattr(keys, "authenticate_key", shutting_down)
    response = client.post("/v1/chat/completions", {"model": "deepseek-chat",
                                                    "messages": [{"role": "user", "content": "hi"}]},
                           content_type="application/json", HTTP_AUTHORIZATION="Bearer sk-anything")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "temporarily unavailable" in response.json()["error"]["message"]
