"""Account mail, sent by the platform worker: a web request only queues it, so neither its answer
nor its timing depends on the mail server, or (for a password reset) on whether the account exists."""
from __future__ import annotations

import logging

from django.core.mail import send_mail

# Levee's own app, not celery's "current" one: a process that also made another app (the tests
# import the inference worker's) must still send these through Levee's broker settings.
from levee.celery import app

log = logging.getLogger(__name__)


@app.task(name="levee.accounts.send_mail", queue="platform", ignore_result=True,
             autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def send_account_mail(to: str, subject: str, body: str) -> None:
    send_mail(subject, body, None, [to], fail_silently=False)


@app.task(name="levee.accounts.password_reset", queue="platform", ignore_result=True)
def send_password_reset(email: str, *, domain: str, use_https: bool) -> None:
    """Look the account up and mail its reset link, here rather than in the request: the request
    answers the same, in the same time, whether or not the account exists. Capped per recipient and
    domain (levee.shield.mail); a capped or unknown address is dropped without a word."""
    from levee.accounts import services

    services.mail_password_reset(email, domain=domain, use_https=use_https)
