"""The model catalogue: which models are served now, and writes to it."""
from __future__ import annotations

import logging
import time

from django.db import transaction
from redis.exceptions import RedisError

from inference import protocol
from levee.api.models import LlmModel

log = logging.getLogger(__name__)


class UnknownModels(ValueError):
    pass


def offer_models(names: list[str]) -> tuple[list[str], list[str]]:
    """Enable exactly the models named (the ones a worker serves) and disable the others, so /models,
    the home page and the price list offer what is served. Names must be in the catalogue. Returns
    (enabled, disabled) as changed by this call."""
    wanted = {n.strip() for n in names if n.strip()}
    with transaction.atomic():
        rows = list(LlmModel.objects.select_for_update().order_by("pk"))
        missing = wanted - {m.name for m in rows}
        if missing:
            raise UnknownModels(f"not in the catalogue: {', '.join(sorted(missing))}")
        enabled = [m.name for m in rows if m.name in wanted and not m.enabled]
        disabled = [m.name for m in rows if m.name not in wanted and m.enabled]
        LlmModel.objects.filter(name__in=enabled).update(enabled=True)
        LlmModel.objects.filter(name__in=disabled).update(enabled=False)
    return enabled, disabled


def served_models() -> tuple[list[str], bool]:
    """The enabled models an inference worker is serving now (a heartbeat within WORKER_TTL_S), in
    name order, and whether that could be checked: with Redis unreachable, every enabled model
    (a request then answers why it cannot). What the chat's model picker, the home page's price
    table and the pricing page offer."""
    from levee.core.store import redis_client

    names = list(LlmModel.objects.filter(enabled=True).values_list("name", flat=True))
    now = time.time()
    try:
        pipe = redis_client().pipeline(transaction=False)
        for name in names:
            pipe.zcount(protocol.workers_key(name), now - protocol.WORKER_TTL_S, "+inf")
        live = pipe.execute()
    except RedisError:
        log.warning("Redis unreachable reading live workers; offering every enabled model")
        return names, False
    return [name for name, count in zip(names, live, strict=True) if count], True
