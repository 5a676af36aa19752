import pytest

from tests.e2e.stack import Stack


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """The small random-weight checkpoint the stacks' inference workers serve (built once a session)."""
    from tests.e2e.checkpoint import e2e_checkpoint

    return e2e_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker, tmp_path_factory, checkpoint):
    """One real stack for the API tests of a session (web, platform worker, inference worker)."""
    # Mail goes to files the browser tests read (the verification link); EMAIL_HOST empty selects that.
    mail_dir = tmp_path_factory.mktemp("mail")
    running = Stack(extra_env={"LEVEE_CHECKPOINT": str(checkpoint), "EMAIL_HOST": "",
                               "EMAIL_FILE_PATH": str(mail_dir)}).start()
    running.checkpoint = checkpoint
    running.mail_dir = mail_dir
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _keys_reach_the_stacks(monkeypatch):
    """In production every process shares the shield's Redis, so a key created anywhere enters the
    API-key filter that the web processes read (levee.shield.keyfilter). Here the test process has a
    Redis database of its own and each stack another: keys the tests create are added to (and
    removed from) every live stack's filter as well."""
    from levee.shield import keyfilter
    from tests.e2e import stack as stacks

    add, remove = keyfilter.add, keyfilter.remove

    def add_everywhere(digest: str, tag_fp: str = "") -> None:
        add(digest, tag_fp)
        for running in stacks.LIVE:
            running.redis.sadd(keyfilter.SET_KEY, digest[:32])
            running.redis.sadd(keyfilter.TAGS_KEY, tag_fp or keyfilter.UNTAGGED)

    def remove_everywhere(digest: str) -> None:
        remove(digest)
        for running in stacks.LIVE:
            running.redis.srem(keyfilter.SET_KEY, digest[:32])

    monkeypatch.setattr(keyfilter, "add", add_everywhere)
    monkeypatch.setattr(keyfilter, "remove", remove_everywhere)


@pytest.fixture(autouse=True)
def _quiesce(request):
    """Let the stack finish settling before the test's tables are flushed: a TRUNCATE racing the
    platform worker's settle transaction deadlocks."""
    yield
    if not any(name == "stack" or name.endswith("_stack") for name in request.fixturenames):
        return
    import time

    from levee.billing.models import Hold

    deadline = time.time() + 30
    while Hold.objects.filter(status="open").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)  # the settle task's transaction commits before its worker thread is idle


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test (screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
