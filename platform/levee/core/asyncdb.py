"""Database work from async views."""
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

_P = ParamSpec("_P")
_R = TypeVar("_R")


def db(fn: Callable[_P, _R]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Run a database-touching function on the shared thread pool, not in a thread of the request's own.

    Django gives each ASGI request its own thread for thread-sensitive calls, and that thread keeps
    a database connection for as long as the response lasts: a thousand open streams would hold a
    thousand connections. Pool threads are few and reused, so connections stay few and warm."""
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        close_old_connections()  # drop a connection past its CONN_MAX_AGE or broken
        return fn(*args, **kwargs)

    return sync_to_async(run, thread_sensitive=False)
