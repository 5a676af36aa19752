from django.contrib import admin

from levee.chat.models import Conversation, Message

MESSAGE_FIELDS = ("role", "status", "model", "reasoning", "content", "prompt_tokens", "completion_tokens", "created_at")


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = readonly_fields = MESSAGE_FIELDS
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "title", "model", "updated_at"]
    search_fields = ["user__email", "title"]
    raw_id_fields = ["user"]
    inlines = [MessageInline]
