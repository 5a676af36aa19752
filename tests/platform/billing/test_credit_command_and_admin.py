import io

import pytest
from django.core.management import CommandError, call_command

from levee.billing.models import AuditEvent, LedgerEntry, Wallet
from levee.billing.services import wallet_for
from tests.personas import ada, root
from tests.platform.billing.conftest import fund

pytestmark = pytest.mark.django_db


def test_credit_parses_the_amount_exactly_and_records_ledger_and_audit():
    user = ada()
    out = io.StringIO()
    call_command("credit", "ADA@example.com", "12.345678901", "--reason", "bank transfer 42", stdout=out)
    assert "Credited 12.345678901 USD" in out.getvalue()
    assert Wallet.objects.get(user=user).topped_up_nano == 12_345_678_901
    entry = LedgerEntry.objects.get()
    audit = AuditEvent.objects.get()
    assert (entry.kind, entry.reason) == ("topup", "bank transfer 42")
    assert (audit.action, audit.source, audit.amount_nano, audit.entry) == ("credit", "command", 12_345_678_901, entry)


@pytest.mark.parametrize("amount", ["-5", "0", "abc", "1e3", "0.0000000001", "99999999999", "1" * 100, "nan", "5,00"])
def test_credit_refuses_bad_amounts_and_writes_nothing(amount):
    ada()
    with pytest.raises(CommandError):
        call_command("credit", "ada@example.com", amount, "--reason", "x", stdout=io.StringIO())
    assert not LedgerEntry.objects.exists() and not AuditEvent.objects.exists()


def test_credit_needs_a_known_account_and_a_reason():
    ada()
    with pytest.raises(CommandError, match="no account"):
        call_command("credit", "nobody@example.com", "5", "--reason", "x", stdout=io.StringIO())
    with pytest.raises(CommandError, match="reason"):
        call_command("credit", "ada@example.com", "5", "--reason", "   ", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("credit", "ada@example.com", "5", stdout=io.StringIO())
    assert not LedgerEntry.objects.exists()


def _admin_action(client, wallet, **form):
    return client.post("/admin/billing/wallet/", {"action": "credit_or_debit", "_selected_action": [wallet.pk],
                                                  **form})


def test_an_admin_credits_and_debits_with_a_required_reason(client):
    admin = root()
    user = ada()
    wallet = wallet_for(user)
    client.force_login(admin)
    form_page = _admin_action(client, wallet)
    assert form_page.status_code == 200 and b"reason" in form_page.content
    assert _admin_action(client, wallet, apply="1", amount="7.5", reason="").status_code == 200  # form again
    assert not LedgerEntry.objects.exists()
    assert _admin_action(client, wallet, apply="1", amount="7.5", reason="goodwill").status_code == 302
    assert _admin_action(client, wallet, apply="1", amount="-2.25", reason="chargeback").status_code == 302
    wallet.refresh_from_db()
    assert wallet.topped_up_nano == 5_250_000_000
    assert list(AuditEvent.objects.order_by("id").values_list("action", "actor", "reason")) == [
        ("credit", admin.pk, "goodwill"), ("debit", admin.pk, "chargeback")]
    assert list(LedgerEntry.objects.order_by("id").values_list("actor", flat=True)) == [admin.pk, admin.pk]


def test_a_debit_cannot_take_more_than_is_topped_up_and_free(client):
    user = ada()
    fund(user, 10**9)
    client.force_login(root())
    response = _admin_action(client, wallet_for(user), apply="1", amount="-1.000000001", reason="oops")
    assert response.status_code == 302
    assert Wallet.objects.get(user=user).topped_up_nano == 10**9
    assert LedgerEntry.objects.count() == 1 and not AuditEvent.objects.filter(action="debit").exists()


def test_an_admin_makes_a_voucher_with_a_generated_code(client):
    from django.utils import timezone

    client.force_login(root())
    expires = (timezone.now() + timezone.timedelta(days=3)).strftime("%Y-%m-%d")
    response = client.post("/admin/billing/voucher/add/", {"code": "", "amount": "10.00", "expires_at_0": expires,
                                                          "expires_at_1": "12:00:00", "max_redemptions": "5",
                                                          "note": "launch"})
    assert response.status_code == 302, response.content[:2000]
    from levee.billing.models import Voucher

    voucher = Voucher.objects.get()
    assert voucher.amount_nano == 10 * 10**9 and len(voucher.code) == 19
    bad = client.post("/admin/billing/voucher/add/", {"code": "x", "amount": "-1", "expires_at_0": expires,
                                                     "expires_at_1": "12:00:00", "max_redemptions": "5"})
    assert bad.status_code == 200 and Voucher.objects.count() == 1


def test_a_price_that_has_been_in_force_cannot_be_edited_in_admin(client, prices):
    client.force_login(root())
    past = prices["output"]
    response = client.post(f"/admin/billing/price/{past.pk}/change/", {
        "model": past.model, "token_class": past.token_class, "currency": "USD", "nano_per_token": "1",
        "effective_from_0": "2020-01-01", "effective_from_1": "00:00:00"})
    assert response.status_code == 403
    past.refresh_from_db()
    assert past.nano_per_token == 420
    assert client.post(f"/admin/billing/price/{past.pk}/delete/", {"post": "yes"}).status_code == 403


def test_the_admins_money_columns_are_exact_and_written_as_the_language_writes_numbers(client, settings):
    from django.utils import translation

    from levee.billing import services

    user = ada()
    services.topup(wallet_for(user), 1_234_567_891_234, source="test", external_id="admin-money")  # 1234.567891234
    client.force_login(root())
    english = client.get("/admin/billing/wallet/").content.decode()
    assert "1,234.567891234" in english  # every nano-unit, grouped
    ledger = client.get("/admin/billing/ledgerentry/").content.decode()
    assert "1,234.567891234" in ledger
    with translation.override("de"):  # a language whose separators differ shows they come from Django
        settings.LANGUAGES = [*settings.LANGUAGES, ("de", "Deutsch")]
        german = client.get("/admin/billing/wallet/", HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert "1.234,567891234" in german
    assert client.get("/admin/billing/wallet/?o=2").status_code == 200  # the column sorts by its field
