"""The platform worker's database connections: kept from task to task (Celery's Django fixup would
close them around every task), replaced when Django's own rules say so."""
import time

import pytest
from celery import signals
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from levee.celery import app


class _Task:
    class request:  # noqa: N801  (the shape the fixup reads)
        is_eager = False


def _run_task(fixup):
    """A task as the worker runs it: the fixup's prerun, the app's prerun handlers, a query, postrun."""
    fixup.on_task_prerun(sender=_Task)
    signals.task_prerun.send(sender=_Task, task_id="t", task=_Task, args=(), kwargs={})
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fixup.on_task_postrun(sender=_Task)
    return pid


@pytest.mark.django_db(transaction=True)
def test_consecutive_tasks_use_one_database_session():
    fixup = DjangoWorkerFixup(app)
    pids = {_run_task(fixup) for _ in range(5)}
    assert len(pids) == 1, pids


@pytest.mark.django_db(transaction=True)
def test_a_connection_past_its_max_age_is_replaced_before_the_next_task():
    fixup = DjangoWorkerFixup(app)
    first = _run_task(fixup)
    connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had passed
    assert _run_task(fixup) != first
