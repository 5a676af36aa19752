import io

import pytest
from django.core.management import CommandError, call_command

from levee.accounts.models import User
from levee.keys.services import authenticate_key

pytestmark = pytest.mark.django_db


def test_create_user_then_create_api_key_prints_a_working_key(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase 7\n")
    call_command("create_user", "ops@example.com", "--verified", "--staff", "--password-file", str(pw), stdout=io.StringIO())
    user = User.objects.get()
    assert user.is_verified and user.is_staff and user.check_password("a long enough passphrase 7")
    out = io.StringIO()
    call_command("create_api_key", "OPS@example.com", "--name", "deploy", stdout=out)
    raw = out.getvalue().strip()
    assert raw.startswith("sk-") and "\n" not in raw
    assert authenticate_key(raw).user == user


def test_create_api_key_refuses_an_unverified_account(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase 7")
    call_command("create_user", "new@example.com", "--password-file", str(pw), stdout=io.StringIO())
    with pytest.raises(CommandError, match="Verify"):
        call_command("create_api_key", "new@example.com", stdout=io.StringIO())


def test_create_user_refuses_a_duplicate_and_a_weak_password(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase 7")
    call_command("create_user", "dup@example.com", "--password-file", str(pw), stdout=io.StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_user", "DUP@example.com", "--password-file", str(pw), stdout=io.StringIO())
    pw.write_text("123")
    with pytest.raises(CommandError):
        call_command("create_user", "weak@example.com", "--password-file", str(pw), stdout=io.StringIO())
    assert User.objects.count() == 1
