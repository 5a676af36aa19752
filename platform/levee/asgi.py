from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from django.core.asgi import get_asgi_application

if TYPE_CHECKING:
    from levee.shield.admission import Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")
_django = get_asgi_application()


def _no_thread_before_each_request() -> None:
    """Under ASGI, Django runs a request's synchronous code in a thread made for that request alone
    (asgiref's ThreadSensitiveContext). When request_started fires, that thread does not exist yet:
    Django's two receivers (close_old_connections, reset_queries) would create it only to find no
    connection and no query log there, and the hop cost every request ~1 ms of time to first token at
    32 streams (ops/bench/api.py). request_finished keeps closing what a synchronous view opened, and
    async views' database work checks its connections itself (levee.core.asyncdb)."""
    from django.core import signals
    from django.db import close_old_connections, reset_queries

    signals.request_started.disconnect(close_old_connections)
    signals.request_started.disconnect(reset_queries)


_no_thread_before_each_request()


async def _timed(scope: Scope, receive: Receive, send: Send) -> None:
    # When the request reached the application, for the Server-Timing header (levee.core.timing).
    scope["levee.received"] = time.perf_counter()
    return await _django(scope, receive, send)


# In front of Django: the body limit, and the doors a flood hits decided before Django builds a
# request (levee.shield.admission; docs/shield.md).
from levee.shield.admission import Admission  # noqa: E402 - needs Django set up first

application = Admission(_timed)
