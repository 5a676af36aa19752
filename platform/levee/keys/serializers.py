from rest_framework import serializers

from levee.keys.models import ApiKey


class ApiKeySerializer(serializers.ModelSerializer):
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked", "revoked_at"]

    def get_revoked(self, obj) -> bool:
        return obj.revoked_at is not None


class CreateApiKeySerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_name(self, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise serializers.ValidationError("must not contain control characters", code="invalid")
        return value
