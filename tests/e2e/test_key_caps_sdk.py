"""A key's spend cap through the official openai SDK against a real stack: refused with a 402 that
names the cap and holds nothing; raised, the same key is served and the counter follows the charge."""
import time

import openai
import pytest

from levee.billing import caps
from levee.billing import services as billing
from levee.billing.models import Hold, KeySpend, UsageRecord
from levee.keys.services import create_api_key
from tests.e2e.stack import MODEL
from tests.personas import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def _seeded(seeded_catalogue):
    return seeded_catalogue


def test_a_capped_key_is_refused_naming_the_cap_then_served_when_raised(stack):
    user = make_user("capped@example.com")
    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id="seed-capped")
    key, raw = create_api_key(user, name="capped")
    caps.set_caps(key, daily=1000, monthly=None, lifetime=None, actor=user, source="test")  # 0.000001 USD a day
    client = openai.OpenAI(api_key=raw, base_url=stack.url + "/v1", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert info.value.status_code == 402
    assert info.value.body["code"] == "daily_spend_cap_reached" and info.value.body["param"] == "daily_cap"
    assert "daily spend cap of 0.000001 USD" in info.value.body["message"]
    assert Hold.objects.count() == 0 and billing.wallet_for(user).held_nano == 0

    caps.set_caps(key, daily=10**8, monthly=None, lifetime=None, actor=user, source="test")
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert completion.choices[0].message.content is not None
    deadline = time.time() + 30
    while time.time() < deadline and not (UsageRecord.objects.exists() and not Hold.objects.filter(status="open")):
        time.sleep(0.1)
    usage = UsageRecord.objects.get()
    assert KeySpend.objects.get(api_key=key, period="day").spent_nano == usage.cost_nano > 0
