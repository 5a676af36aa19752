from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from levee.core.models import AuditLog


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records nobody edits by hand (ledgers, audit logs): view and search only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "target", "actor", "source")
    list_filter = ("action", "source")
    search_fields = ("target", "actor__email")
