"""Which shedding priority an API caller has. Billing knows who pays; until it says otherwise,
every key-authenticated caller is treated as paid (shed last, fails open when Redis is down)."""
from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

PRIORITIES = ["anon_page", "free_chat", "free_api", "paid_api"]  # shed first -> shed last


def default_api_tier(user, api_key) -> str:
    return "paid_api"


def api_tier(user, api_key) -> str:
    tier = import_string(settings.SHIELD_API_TIER)(user, api_key)
    if tier not in {"free_api", "paid_api"}:
        raise ValueError(f"SHIELD_API_TIER returned {tier!r}; expected free_api or paid_api")
    return tier
