"""SIGKILL the inference worker mid-stream: the client gets a clean error within the heartbeat
timeout, the hold is settled for what was delivered, and nothing stays held after the sweep."""
import time

import openai
import pytest

from levee.billing import services as billing
from levee.billing.models import Hold, UsageRecord
from levee.keys.services import create_api_key
from tests.e2e.stack import MODEL, Stack
from tests.personas import make_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def own_stack(django_db_setup, stack, seeded_catalogue):
    # Its own stack: this test kills a worker, which the shared one must keep.
    running = Stack(heartbeat_timeout=3, extra_env={"LEVEE_CHECKPOINT": str(stack.checkpoint)}, redis_offset=2)
    running.start()
    yield running
    running.stop()


def test_a_killed_worker_ends_the_stream_cleanly_and_the_money_is_right(own_stack):
    user = make_user("victim@example.com")
    billing.topup(billing.wallet_for(user), 10**9, source="test", external_id="kill")
    _, key = create_api_key(user)
    before = billing.balance_view(user)
    client = openai.OpenAI(api_key=key, base_url=own_stack.url, max_retries=0, timeout=60)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=1000, stream=True, seed=11)
    received = 0
    started = None
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 5:
                    own_stack.kill("inference")
                    started = time.monotonic()
    assert started is not None and time.monotonic() - started <= 15
    assert "stopped responding" in str(info.value)
    # The web side settled the hold for what it delivered.
    deadline = time.time() + 15
    while Hold.objects.filter(status="open").exists() and time.time() < deadline:
        time.sleep(0.2)
    hold = Hold.objects.get()
    assert hold.status == "settled"
    record = UsageRecord.objects.get()
    assert received <= record.completion_tokens < 1000
    billing.sweep_holds()
    assert not Hold.objects.filter(status="open").exists()
    after = billing.balance_view(user)
    assert before["total_nano"] - after["total_nano"] == record.cost_nano
    assert billing.reconcile() == []
