"""Web chat history: conversations owned by one account, and their messages."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

TITLE_MAX_LENGTH = 80


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations",
                             verbose_name=_("user"))
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True, verbose_name=_("title"))
    model = models.CharField(max_length=64, help_text=_("the model of the latest reply"),
                             verbose_name=_("model"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    updated_at = models.DateTimeField(default=timezone.now, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def display_title(self) -> str:
        return self.title or gettext("New chat")


class Role(models.TextChoices):
    USER = "user", _("User")
    ASSISTANT = "assistant", _("Assistant")


class Status(models.TextChoices):
    STREAMING = "streaming", _("Streaming")  # a job is producing it now
    COMPLETE = "complete", _("Complete")
    STOPPED = "stopped", _("Stopped")  # the owner pressed stop, or left; the part received is kept
    ERROR = "error", _("Error")


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages",
                                     verbose_name=_("conversation"))
    role = models.CharField(max_length=9, choices=Role.choices, verbose_name=_("role"))
    content = models.TextField(blank=True, verbose_name=_("content"))
    # A reasoner's <think>…</think>, kept apart from the answer: shown, never sent back to the model.
    reasoning = models.TextField(blank=True, verbose_name=_("reasoning"))
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.COMPLETE,
                              verbose_name=_("status"))
    model = models.CharField(max_length=64, blank=True, verbose_name=_("model"))
    job_id = models.CharField(max_length=64, blank=True, db_index=True, verbose_name=_("job id"))
    finish_reason = models.CharField(max_length=32, blank=True, verbose_name=_("finish reason"))
    error = models.CharField(max_length=300, blank=True, verbose_name=_("error"))
    prompt_tokens = models.PositiveIntegerField(default=0, verbose_name=_("prompt tokens"))
    completion_tokens = models.PositiveIntegerField(default=0, verbose_name=_("completion tokens"))
    # Tokens of `content` in its model's tokenizer (a question: as a prompt of its own, template
    # tokens included; a reply: what the worker reported making, more when a reasoner thought first). The web chat trims a long conversation to the
    # context by adding these up, instead of tokenizing the whole conversation again and again.
    # 0: not counted (messages from before the count existed); its UTF-8 length bounds it.
    content_tokens = models.PositiveIntegerField(default=0, verbose_name=_("content tokens"))
    created_at = models.DateTimeField(default=timezone.now, verbose_name=_("created at"))
    finished_at = models.DateTimeField(null=True, blank=True, verbose_name=_("finished at"))

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["id"]
        indexes = [models.Index(fields=["conversation", "id"])]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"
