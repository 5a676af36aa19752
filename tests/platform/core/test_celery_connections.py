"""The platform worker's database connections: no new PostgreSQL session per task (Celery's Django
fixup would close the connection around every task), let go when Django's own rules say so."""
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


def _sessions() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_consecutive_tasks_open_no_new_database_session():
    fixup = DjangoWorkerFixup(app)
    _run_task(fixup)  # warm: the connection exists from here on
    before = _sessions()
    used = {_run_task(fixup) for _ in range(10)}
    assert used <= before, (used, before)


@pytest.mark.django_db(transaction=True)
def test_before_each_task_a_connection_past_its_max_age_is_let_go():
    """Django's rule, as for a web request: past CONN_MAX_AGE the connection is closed before the
    next task opens one."""
    fixup = DjangoWorkerFixup(app)
    _run_task(fixup)
    assert connection.connection is not None
    connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had passed
    signals.task_prerun.send(sender=_Task, task_id="t", task=_Task, args=(), kwargs={})
    assert connection.connection is None
