"""Per-process memos of rarely changing rows read on every API request (models, price lists, tiers).

A value is kept for `seconds`; a change saved in this process clears its memo at once (and again
at commit), other processes see it within `seconds`. Each memo names that bound in docs where
it matters (docs/jobs.md, docs/billing.md). LEVEE_MEMO_SECONDS, when set, replaces every memo's
bound (0 turns them off: the end-to-end tests, which change rows under a live server).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.models import Model

_memos: list[Memo] = []
MISSING = object()


class Memo:
    def __init__(self, name: str, seconds: float, maxsize: int = 10_000, keep_none: bool = True):
        self.name, self.seconds, self.maxsize, self.keep_none = name, seconds, maxsize, keep_none
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        _memos.append(self)

    def _seconds(self) -> float:
        from django.conf import settings

        override = getattr(settings, "LEVEE_MEMO_SECONDS", None)
        return self.seconds if override is None else override

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = compute()
        seconds = self._seconds()
        if seconds > 0 and (value is not None or self.keep_none):
            with self._lock:
                if len(self._values) >= self.maxsize:
                    self._values.clear()
                self._values[key] = (now + seconds, value)
        return value

    def peek(self, key: Hashable) -> Any:
        """The value if it is held and fresh, else MISSING."""
        hit = self._values.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else MISSING

    async def aget(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """get() from async code: a hit costs no thread; a miss computes on the database pool."""
        value = self.peek(key)
        if value is not MISSING:
            return value
        from levee.core.asyncdb import db

        return await db(self.get)(key, compute)

    def clear(self, *_args: object, **_kwargs: object) -> None:
        with self._lock:
            self._values.clear()

    def clear_on_change(self, *models: type[Model]) -> None:
        """Clear when a row of any of `models` is saved or deleted in this process, and at its commit."""
        from django.db import transaction
        from django.db.models.signals import post_delete, post_save

        def changed(*_args: object, **_kwargs: object) -> None:
            self.clear()
            transaction.on_commit(self.clear)

        for model in models:
            post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"memo-{self.name}-{model.__name__}-save")
            post_delete.connect(changed, sender=model, weak=False,
                                dispatch_uid=f"memo-{self.name}-{model.__name__}-delete")


def clear_all() -> None:
    """Forget every memo (tests whose rolled-back rows a memo may still hold)."""
    for memo in _memos:
        memo.clear()
