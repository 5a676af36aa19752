import io

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from levee.billing.models import LedgerEntry, Wallet
from tests.personas import ada, make_user
from tests.platform.billing.conftest import fund

pytestmark = pytest.mark.django_db


def test_reconcile_passes_when_every_wallet_matches_its_ledger():
    fund(ada(), 5 * 10**9)
    fund(make_user("eve@example.com"), 10**9)
    out = io.StringIO()
    call_command("reconcile", stdout=out)
    assert "2 wallet(s) reconcile" in out.getvalue()


def test_reconcile_exits_non_zero_on_a_tampered_wallet():
    fund(ada(), 5 * 10**9)
    Wallet.objects.update(topped_up_nano=F("topped_up_nano") + 1)  # someone edits the balance by hand
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 discrepancy"):
        call_command("reconcile", stderr=err)
    assert "topped_up_nano is 5000000001 nano but its ledger says 5000000000" in err.getvalue()


def test_reconcile_exits_with_status_1_from_the_command_line():
    fund(ada(), 10)
    Wallet.objects.update(held_nano=5)  # a hold with no ledger entry and no hold row
    from levee.billing.management.commands.reconcile import Command

    with pytest.raises(SystemExit) as exit_:
        Command().run_from_argv(["manage.py", "reconcile"])
    assert exit_.value.code == 1


def test_ledger_entries_cannot_be_edited_or_deleted():
    entry = fund(ada(), 10)
    entry.reason = "changed"
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        LedgerEntry.objects.update(reason="x")
    with pytest.raises(TypeError):
        LedgerEntry.objects.all().delete()


def test_the_database_refuses_a_negative_balance_or_unbacked_holds():
    from django.db import IntegrityError, transaction

    fund(ada(), 10)
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.update(topped_up_nano=-1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Wallet.objects.update(held_nano=11)
