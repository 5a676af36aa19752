"""Shared fixtures. Tests run against the machine's PostgreSQL and Redis (DATABASE_URL, REDIS_URL)."""
import os

import pytest

os.environ.setdefault("LEVEE_ENV", "test")


@pytest.fixture(autouse=True)
def _fast_hashing_and_mail(settings, request):
    """Argon2 costs ~0.1 s a hash on two cores; most tests only need *a* hasher. Tests marked
    `real_hasher` keep the production list (and one asserts it is Argon2)."""
    if "real_hasher" not in request.keywords:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def _account_mail_in_process(monkeypatch):
    """Account mail is a Celery task (levee.accounts.tasks); here `.delay` runs it where it is queued,
    so django.core.mail.outbox sees it. Only these tasks: others keep their real workers (and their
    countdowns). Tests that check mail is queued rather than sent stub `.delay` themselves."""
    from levee.accounts import tasks

    for task in (tasks.send_account_mail, tasks.send_password_reset):
        monkeypatch.setattr(task, "delay", lambda *args, _task=task, **kwargs: _task.apply(args=args, kwargs=kwargs))


@pytest.fixture(autouse=True)
def _no_signup_puzzle_in_normal_mode(settings, request):
    """Production asks a light proof of work of every sign-up (SHIELD_POW_BITS["normal"]); tests
    about something else post the form without solving one. Tests marked `signup_pow` keep it."""
    if "signup_pow" not in request.keywords:
        settings.SHIELD_POW_BITS = {**settings.SHIELD_POW_BITS, "normal": 0}


@pytest.fixture(autouse=True)
def _fresh_shield(settings):
    """Each test starts with empty limiter counters and no cached mitigation state: the test Redis
    database (REDIS_URL, one per test runner) is emptied, and the shield's in-process caches dropped.
    Tests that need the mode or address rules to come from the database delete the mirror keys."""
    import redis

    from levee.core import memo, rates
    from levee.shield import shedding, state

    rates.forget()  # counts a previous test kept in the process
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    # What the first request of a fresh deployment would mirror from the (empty) database.
    client.mset({state.MODE_KEY: "normal", state.RULES_KEY: "[]"})
    state.forget()
    shedding.forget()
    memo.clear_all()  # memos may hold rows a previous test's rollback removed
    yield
    state.forget()


def pytest_configure(config):
    config.addinivalue_line("markers", "real_hasher: keep the production password hashers")
    config.addinivalue_line("markers", "signup_pow: keep the proof of work that normal mode asks of a sign-up")


@pytest.fixture
def redis_client(settings):
    """The test Redis database, emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def seeded_catalogue(transactional_db):
    """The rows that data migrations seed (models, published prices). Transactional tests flush every
    table after they run, so tests that need the catalogue re-seed it through the same functions."""
    import importlib

    from django.apps import apps

    from levee.api.models import LlmModel
    from levee.billing.pricing import seed_published_prices

    if not LlmModel.objects.exists():
        importlib.import_module("levee.api.migrations.0001_initial").seed_models(apps, None)
    seed_published_prices()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, plus: before the test database is dropped, end the sessions that async views
    opened from the shared thread pool (levee.core.asyncdb), which the main thread cannot close."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
