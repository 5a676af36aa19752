from collections.abc import Callable

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from levee.core.memo import Memo


class LlmModel(models.Model):
    """A model the API offers. Prices live in billing's price book, keyed by `name`."""

    name = models.CharField(max_length=64, unique=True, help_text=_("the `model` field clients send"),
                            verbose_name=_("name"))
    queue = models.CharField(max_length=128, blank=True, help_text=_("Celery queue; empty means inference.<name>"),
                             verbose_name=_("queue"))
    tokenizer_dir = models.CharField(max_length=512, default="inference/demo/checkpoint",
                                     help_text=_("directory with tokenizer.json and tokenizer_config.json; relative paths start at the project root"),
                                     verbose_name=_("tokenizer dir"))
    context_length = models.PositiveIntegerField(default=4096, validators=[MinValueValidator(16)],
                                                 verbose_name=_("context length"))
    max_output = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(1)],
                                             help_text=_("largest max_tokens a request may ask for"),
                                             verbose_name=_("max output"))
    default_max_tokens = models.PositiveIntegerField(default=1024, validators=[MinValueValidator(1)],
                                                     verbose_name=_("default max tokens"))
    # A prompt of more than context_length × this many characters cannot fit, whatever its tokens:
    # it is refused before anything tokenizes it (the tokenizer is the expensive part of a request).
    prompt_chars_per_token = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(1)],
        help_text=_("refuse, before tokenizing, a prompt longer than context_length × this many characters"),
        verbose_name=_("prompt chars per token"))
    max_queue_depth = models.PositiveIntegerField(default=256, help_text=_("queued jobs above this → 503"),
                                                  verbose_name=_("max queue depth"))
    reasoner = models.BooleanField(default=False, help_text=_("split <think>…</think> into reasoning_content"),
                                   verbose_name=_("reasoner"))
    enabled = models.BooleanField(default=True, verbose_name=_("enabled"))
    owned_by = models.CharField(max_length=64, default="levee", verbose_name=_("owned by"))
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("model")
        verbose_name_plural = _("models")
        ordering = ["name"]

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


def _load_enabled(name: str) -> Callable[[], LlmModel | None]:
    return lambda: LlmModel.objects.filter(name=name, enabled=True).first()


def enabled_model(name: str) -> LlmModel | None:
    """The enabled model called `name`, or None."""
    return _enabled.get(name, _load_enabled(name))


async def aenabled_model(name: str) -> LlmModel | None:
    return await _enabled.aget(name, _load_enabled(name))
