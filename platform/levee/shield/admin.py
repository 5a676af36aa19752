from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from levee.accounts.operators import operator
from levee.core.admin import ReadOnlyAdmin
from levee.shield import services
from levee.shield.models import AddressRule, LimitOverride, MitigationState, ModeChange


class MitigationStateForm(forms.ModelForm):
    change_reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=True,
                                    help_text=_("Required: why you are changing the mode (kept in the audit log)."),
                                    label=_("Reason for the change"))

    class Meta:
        model = MitigationState
        fields = ["mode", "pinned"]


@admin.register(MitigationState)
class MitigationStateAdmin(admin.ModelAdmin):
    """The one switch: pick a mode, give a reason. Saved through services.set_mode (audited, mirrored
    to Redis, in effect in every process within a second)."""

    form = MitigationStateForm
    list_display = ("mode", "pinned", "reason", "changed_by", "changed_at")
    readonly_fields = ("reason", "changed_by", "changed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: MitigationState | None = None) -> bool:
        return False

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> MitigationState | None:
        services.get_state()  # the row always exists, even on a database emptied by hand
        return super().get_object(request, object_id, from_field)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponseRedirect:
        row = services.get_state()
        return HttpResponseRedirect(reverse("admin:shield_mitigationstate_change", args=[row.pk]))

    def save_model(self, request: HttpRequest, obj: MitigationState, form: forms.ModelForm, change: bool) -> None:
        changed = services.set_mode(form.cleaned_data["mode"], pinned=form.cleaned_data["pinned"],
                                    reason=form.cleaned_data["change_reason"], by=operator(request))
        if not changed:
            messages.info(request, gettext("The mode was already set that way; nothing changed."))
        obj.refresh_from_db()


@admin.register(ModeChange)
class ModeChangeAdmin(ReadOnlyAdmin):
    list_display = ("at", "source", "by", "from_mode", "to_mode", "pinned", "reason")
    list_filter = ("source", "to_mode")


@admin.register(AddressRule)
class AddressRuleAdmin(admin.ModelAdmin):
    list_display = ("network", "action", "reason", "expires_at", "created_by", "created_at")
    list_filter = ("action",)
    search_fields = ("network", "reason")
    readonly_fields = ("created_by", "created_at")

    def save_model(self, request: HttpRequest, obj: AddressRule, form: forms.ModelForm, change: bool) -> None:
        services.save_address_rule(obj, by=operator(request))

    def delete_model(self, request: HttpRequest, obj: AddressRule) -> None:
        services.delete_address_rule(obj, by=operator(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AddressRule]) -> None:
        for rule in queryset:
            services.delete_address_rule(rule, by=operator(request))


@admin.register(LimitOverride)
class LimitOverrideAdmin(admin.ModelAdmin):
    list_display = ("__str__", "requests_per_minute", "tokens_per_minute", "concurrent_jobs", "note", "updated_at")
    raw_id_fields = ("user", "api_key")
    search_fields = ("user__email", "api_key__prefix", "note")

    def save_model(self, request: HttpRequest, obj: LimitOverride, form: forms.ModelForm, change: bool) -> None:
        services.save_limit_override(obj, by=operator(request))

    def delete_model(self, request: HttpRequest, obj: LimitOverride) -> None:
        services.delete_limit_override(obj, by=operator(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[LimitOverride]) -> None:
        for override in queryset:
            services.delete_limit_override(override, by=operator(request))
