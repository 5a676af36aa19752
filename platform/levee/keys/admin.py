from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from levee.accounts.operators import operator
from levee.keys.models import ApiKey
from levee.keys.services import revoke_api_key


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("prefix", "user__email", "name")
    # Spend caps are the owner's (set through levee.billing.caps.set_caps, audited): shown, not edited here.
    readonly_fields = ("user", "prefix", "digest", "created_at", "last_used_at", "revoked_at", "revoked_by",
                       "daily_cap_nano", "monthly_cap_nano", "lifetime_cap_nano")
    fields = ("user", "name", "prefix", "digest", "created_at", "last_used_at", "expires_at", "revoked_at", "revoked_by",
              "daily_cap_nano", "monthly_cap_nano", "lifetime_cap_nano")
    actions = ["revoke"]
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are made by their owner (or create_api_key), so the secret is shown once to them

    @admin.action(description=_("Revoke selected keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        by = operator(request)
        count = sum(revoke_api_key(key, by=by, source="admin") for key in queryset)
        self.message_user(request, ngettext("Revoked %(count)d key.", "Revoked %(count)d keys.", count) % {"count": count},
                          messages.SUCCESS)
