from django.contrib import admin

from levee.api.models import LlmModel


@admin.register(LlmModel)
class LlmModelAdmin(admin.ModelAdmin):
    list_display = ("name", "enabled", "reasoner", "queue_name", "context_length", "max_output", "max_queue_depth")
    list_filter = ("enabled", "reasoner")
    search_fields = ("name",)
