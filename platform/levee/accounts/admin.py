from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from levee.accounts.models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ("-date_joined",)
    list_display = ("email", "is_verified", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff", ("email_verified_at", admin.EmptyFieldListFilter))
    search_fields = ("email",)
    readonly_fields = ("date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Status"), {"fields": ("email_verified_at", "is_active", "is_staff", "is_superuser")}),
        (_("Permissions"), {"fields": ("groups", "user_permissions")}),
        (_("Dates"), {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        """The admin's add and change forms save the user themselves: the canonical email follows
        here, as it does where the manager makes an account."""
        from levee.shield.emails import record_canonical_email

        super().save_model(request, obj, form, change)
        if not change or "email" in form.changed_data:
            record_canonical_email(obj)

    @admin.display(boolean=True, description=_("verified"))
    def is_verified(self, obj: User) -> bool:
        return obj.is_verified
