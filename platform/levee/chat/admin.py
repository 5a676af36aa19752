from django.contrib import admin

from levee.chat.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "status", "model", "reasoning", "content", "prompt_tokens", "completion_tokens", "created_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "title", "model", "updated_at"]
    search_fields = ["user__email", "title"]
    raw_id_fields = ["user"]
    inlines = [MessageInline]
