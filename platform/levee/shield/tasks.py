"""Automatic mitigation's beat task: the same evaluation the web processes run every second
(levee.shield.escalation), every 10 s from Celery beat, so a site without web traffic still
calms down on schedule."""
from __future__ import annotations

from celery import shared_task

from levee.shield import escalation


def evaluate_mode() -> str | None:
    """One look at the windows; returns the new mode if it changed."""
    return escalation.evaluate()


@shared_task(name="levee.shield.evaluate_mode", queue="platform", ignore_result=True,
             soft_time_limit=5, time_limit=10)
def evaluate_mode_task() -> str | None:
    return evaluate_mode()
