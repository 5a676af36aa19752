"""Web chat history: conversations owned by one account, and their messages."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext

TITLE_MAX_LENGTH = 80


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True)
    model = models.CharField(max_length=64, help_text="the model of the latest reply")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def display_title(self) -> str:
        return self.title or gettext("New chat")


class Role(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class Status(models.TextChoices):
    STREAMING = "streaming"  # a job is producing it now
    COMPLETE = "complete"
    STOPPED = "stopped"  # the owner pressed stop, or left; the part received is kept
    ERROR = "error"


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=9, choices=Role.choices)
    content = models.TextField(blank=True)
    # A reasoner's <think>…</think>, kept apart from the answer: shown, never sent back to the model.
    reasoning = models.TextField(blank=True)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=64, blank=True)
    job_id = models.CharField(max_length=64, blank=True, db_index=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.CharField(max_length=300, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # Tokens of `content` in its model's tokenizer (a question: as a prompt of its own, template
    # tokens included; a reply: what the worker reported making, more when a reasoner thought first). The web chat trims a long conversation to the
    # context by adding these up, instead of tokenizing the whole conversation again and again.
    # 0: not counted (messages from before the count existed); its UTF-8 length bounds it.
    content_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["conversation", "id"])]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"
