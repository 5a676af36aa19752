"""The platform's Celery app: settlement, sweeps and roll-ups on the `platform` queue."""
import os

from celery import Celery, Task, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")

app = Celery("levee")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
def _connections_as_django_would(task: Task | None = None, **_: object) -> None:
    """What a web request gets at its start: a connection past CONN_MAX_AGE, or left unusable by an
    error, is closed here, so the task opens a fresh one (the fixup no longer closes it every task:
    CELERY_DB_REUSE_MAX in settings). Not for a task run eagerly, inside its caller's transaction."""
    from django.db import close_old_connections

    if not getattr(getattr(task, "request", None), "is_eager", False):
        close_old_connections()
