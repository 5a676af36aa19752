"""Web chat's periodic work, on the `platform` queue."""
from __future__ import annotations

import logging

from celery import shared_task

from levee.chat import services

log = logging.getLogger(__name__)


@shared_task(name="levee.chat.sweep_stale_replies", queue="platform", ignore_result=True)
def sweep_stale_replies() -> int:
    finished = services.sweep_stale_replies()
    if finished:
        log.warning("finished %s web chat replies left streaming by a lost web process", finished)
    return finished
