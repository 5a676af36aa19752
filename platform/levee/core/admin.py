from django.contrib import admin

from levee.core.models import AuditLog


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records nobody edits by hand (ledgers, audit logs): view and search only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "target", "actor", "source")
    list_filter = ("action", "source")
    search_fields = ("target", "actor__email")
