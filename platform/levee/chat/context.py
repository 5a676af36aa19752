"""The free chat allowance for every page (home, usage, chat, the banner): one number, for the
shield's current mode, so no page promises what another refuses."""
from __future__ import annotations

from django.http import HttpRequest

from levee.chat import services


def free_chat(request: HttpRequest) -> dict:
    """`chat_quota`: free web chat tokens per account per UTC day, as of now."""
    return {"chat_quota": services.daily_quota(services.current_mode())}
