"""The platform's Celery app: settlement, sweeps and roll-ups on the `platform` queue."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "levee.settings")

app = Celery("levee")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
