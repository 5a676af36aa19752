import pytest

from tests.e2e.stack import Stack


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """One real stack for the API tests of a session (web, platform worker, inference worker)."""
    from tests.e2e.checkpoint import e2e_checkpoint

    checkpoint = e2e_checkpoint(tmp_path_factory.mktemp("ckpt"))
    running = Stack(extra_env={"LEVEE_CHECKPOINT": str(checkpoint)}).start()
    running.checkpoint = checkpoint
    yield running
    running.stop()
