"""Operator writes go through services, each with its audit row in the same transaction: address rules,
limit overrides, vouchers and an operator's revocation of someone else's API key."""
import pytest
from django.utils import timezone

from levee.billing.models import AuditEvent, Voucher
from levee.core.models import AuditLog
from levee.keys.models import ApiKey
from levee.keys.services import create_api_key
from levee.shield.models import AddressRule, LimitOverride
from tests.personas import ada, root

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = root()
    client.force_login(user)
    return user


def test_adding_changing_and_deleting_an_address_rule_in_admin_is_audited(client, operator):
    response = client.post("/admin/shield/addressrule/add/", {"network": "203.0.113.0/24", "action": "deny",
                                                              "reason": "flood"})
    assert response.status_code == 302, response.content[:2000]
    rule = AddressRule.objects.get()
    assert rule.created_by == operator
    client.post(f"/admin/shield/addressrule/{rule.pk}/change/", {"network": "203.0.113.0/24", "action": "allow",
                                                                 "reason": "partner"})
    client.post(f"/admin/shield/addressrule/{rule.pk}/delete/", {"post": "yes"})
    assert not AddressRule.objects.exists()
    rows = list(AuditLog.objects.order_by("id").values_list("action", "actor", "target"))
    assert rows == [("address_rule.created", operator.pk, "deny 203.0.113.0/24"),
                    ("address_rule.changed", operator.pk, "allow 203.0.113.0/24"),
                    ("address_rule.deleted", operator.pk, "allow 203.0.113.0/24")]
    assert AuditLog.objects.get(action="address_rule.changed").detail["reason"] == "partner"


def test_a_rule_whose_audit_row_cannot_be_written_is_not_saved(operator, monkeypatch):
    from levee.shield import services

    def broken(*args, **kwargs):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(services, "audit", broken)
    with pytest.raises(RuntimeError):
        services.save_address_rule(AddressRule(network="198.51.100.0/24", action="deny", reason="test"), by=operator)
    assert not AddressRule.objects.exists()


def test_limit_overrides_are_audited_with_their_numbers(client, operator):
    customer = ada()
    response = client.post("/admin/shield/limitoverride/add/", {"user": customer.pk, "requests_per_minute": "600",
                                                                "note": "enterprise"})
    assert response.status_code == 302, response.content[:2000]
    override = LimitOverride.objects.get()
    client.post(f"/admin/shield/limitoverride/{override.pk}/delete/", {"post": "yes"})
    created, deleted = AuditLog.objects.order_by("id")
    assert (created.action, deleted.action) == ("limit_override.created", "limit_override.deleted")
    assert created.detail["requests_per_minute"] == "600" and created.actor == operator


def test_vouchers_are_saved_and_deleted_with_their_audit_rows(client, operator):
    expires = (timezone.now() + timezone.timedelta(days=3)).strftime("%Y-%m-%d")
    client.post("/admin/billing/voucher/add/", {"code": "LAUNCH-1", "amount": "10.00", "expires_at_0": expires,
                                               "expires_at_1": "12:00:00", "max_redemptions": "5"})
    voucher = Voucher.objects.get()
    client.post(f"/admin/billing/voucher/{voucher.pk}/delete/", {"post": "yes"})
    assert not Voucher.objects.exists()
    assert list(AuditEvent.objects.order_by("id").values_list("action", "actor")) == [
        ("voucher created", operator.pk), ("voucher deleted", operator.pk)]


def test_a_voucher_redeemed_meanwhile_is_not_deleted(operator):
    from levee.billing import services

    voucher = Voucher.objects.create(code="USED-1", amount_nano=10**9, max_redemptions=5,
                                     expires_at=timezone.now() + timezone.timedelta(days=1), redeemed_count=1)
    assert services.delete_voucher(voucher, by=operator) is False
    assert Voucher.objects.filter(pk=voucher.pk).exists()
    assert not AuditEvent.objects.filter(action="voucher deleted").exists()


def test_an_operator_revoking_a_customers_key_is_audited_and_the_owner_revoking_their_own_is_not(client, operator):
    customer = ada()
    first, _ = create_api_key(customer, name="laptop")
    second, _ = create_api_key(customer, name="ci")
    response = client.post("/admin/keys/apikey/", {"action": "revoke", "_selected_action": [first.pk]})
    assert response.status_code == 302
    from levee.keys.services import revoke_api_key

    assert revoke_api_key(second, by=customer) is True
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 2
    row = AuditLog.objects.get()
    assert (row.action, row.actor, row.source) == ("api_key.revoked", operator, "admin")
    assert row.detail == {"key_id": first.pk, "owner_id": customer.pk}
