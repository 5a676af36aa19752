from typing import Any

from rest_framework import serializers

from levee.keys.models import ApiKey

CAP_NAMES = {"daily_cap": "day", "monthly_cap": "month", "lifetime_cap": "lifetime"}


class ApiKeySerializer(serializers.ModelSerializer):
    revoked = serializers.SerializerMethodField()
    spend_caps = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked", "revoked_at",
                  "spend_caps"]

    def get_revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None

    def get_spend_caps(self, obj: ApiKey) -> dict[str, Any]:
        """{"daily_cap": null | {"limit", "limit_nano", "spent", "spent_nano"}, "monthly_cap": …, "lifetime_cap": …}:
        spent is what the key's requests reserve or were charged in the period so far (UTC)."""
        from levee.billing import caps
        from levee.billing.money import format_amount

        spent = caps.current(obj) if obj.caps else {}
        out: dict[str, Any] = {}
        for name, period in CAP_NAMES.items():
            limit = obj.caps.get(period)
            out[name] = None if limit is None else {
                "limit": caps.cap_text(limit), "limit_nano": limit,
                "spent": format_amount(spent.get(period, 0), places=6), "spent_nano": spent.get(period, 0)}
        return out


def parse_cap(value: object, name: str) -> int | None:
    """A cap from a request: a decimal string (or number) of currency units, or null/"" for none."""
    from levee.billing.money import InvalidAmount, parse_amount

    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise serializers.ValidationError({name: "must be a decimal amount like \"5.00\", or null"}, code="invalid")
    try:
        return parse_amount(str(value))
    except InvalidAmount as exc:
        raise serializers.ValidationError({name: str(exc)}, code="invalid") from None


class CapsSerializer(serializers.Serializer):
    """Spend caps in a request body; a name left out keeps its current value."""

    daily_cap = serializers.JSONField(required=False, allow_null=True)
    monthly_cap = serializers.JSONField(required=False, allow_null=True)
    lifetime_cap = serializers.JSONField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {name: parse_cap(value, name) if name in CAP_NAMES else value for name, value in attrs.items()}


class CreateApiKeySerializer(CapsSerializer):
    name = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_name(self, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise serializers.ValidationError("must not contain control characters", code="invalid")
        return value
