"""Prompt tokens on the web side: the model's own tokenizer through `tokenizers`, never torch."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from inference.tokenizer import Tokenizer
    from levee.api.models import LlmModel


def tokenizer_for(model: LlmModel) -> Tokenizer:
    from inference.tokenizer import Tokenizer  # torch-free; caches per directory

    path = Path(model.tokenizer_dir)
    if not path.is_absolute():
        path = Path(settings.BASE_DIR) / path
    return Tokenizer.from_dir(str(path))


def encode_prompt(model: LlmModel, messages: list[dict]) -> list[int]:
    return tokenizer_for(model).encode_chat(messages, thinking=model.reasoner)


def opens_thinking(model: LlmModel, prompt_ids: list[int]) -> bool:
    """Whether the rendered prompt ends inside an opened `<think>` (a reasoning template writes it
    into the generation prompt): the output then starts with the reasoning, without the tag."""
    tail = tokenizer_for(model).decode(prompt_ids[-4:], skip_special_tokens=False)
    return tail.rstrip().endswith("<think>")
