from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from levee.core.memo import Memo


class LlmModel(models.Model):
    """A model the API offers. Prices live in billing's price book, keyed by `name`."""

    name = models.CharField(max_length=64, unique=True, help_text="the `model` field clients send")
    queue = models.CharField(max_length=128, blank=True, help_text="Celery queue; empty means inference.<name>")
    tokenizer_dir = models.CharField(max_length=512, default="inference/demo/checkpoint",
                                     help_text="directory with tokenizer.json and tokenizer_config.json; "
                                               "relative paths start at the project root")
    context_length = models.PositiveIntegerField(default=4096, validators=[MinValueValidator(16)])
    max_output = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(1)],
                                             help_text="largest max_tokens a request may ask for")
    default_max_tokens = models.PositiveIntegerField(default=1024, validators=[MinValueValidator(1)])
    # A prompt of more than context_length × this many characters cannot fit, whatever its tokens:
    # it is refused before anything tokenizes it (the tokenizer is the expensive part of a request).
    prompt_chars_per_token = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(1)],
        help_text="refuse, before tokenizing, a prompt longer than context_length × this many characters")
    max_queue_depth = models.PositiveIntegerField(default=256, help_text="queued jobs above this → 503")
    reasoner = models.BooleanField(default=False, help_text="split <think>…</think> into reasoning_content")
    enabled = models.BooleanField(default=True)
    owned_by = models.CharField(max_length=64, default="levee")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """An enabled model must have a price in force (a request for it could not be billed)."""
        super().clean()
        if self.enabled and self.name and not has_price(self.name):
            raise ValidationError({"enabled": f"{self.name} has no price in force in the price book; add its "
                                              "prices (Billing → Prices) before enabling it."})

    @property
    def queue_name(self) -> str:
        from inference.protocol import queue_name

        return self.queue or queue_name(self.name)


def has_price(name: str) -> bool:
    """Whether billing's price book has every token class of the model in force now."""
    from levee.billing.pricing import PriceNotFound, rates_at

    try:
        rates_at(name)
    except PriceNotFound:
        return False
    return True


# Read on every API request: memoized per process; an admin change reaches other processes
# within MODEL_MEMO_SECONDS (levee.core.memo).
MODEL_MEMO_SECONDS = 2
_enabled = Memo("models", MODEL_MEMO_SECONDS)
_enabled.clear_on_change(LlmModel)


def _load_enabled(name: str):
    return lambda: LlmModel.objects.filter(name=name, enabled=True).first()


def enabled_model(name: str) -> LlmModel | None:
    """The enabled model called `name`, or None."""
    return _enabled.get(name, _load_enabled(name))


async def aenabled_model(name: str) -> LlmModel | None:
    return await _enabled.aget(name, _load_enabled(name))
