"""Prompt tokens on the web side: the model's own tokenizer through `tokenizers`, never torch."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings


def tokenizer_for(model):
    from inference.tokenizer import Tokenizer  # torch-free; caches per directory

    path = Path(model.tokenizer_dir)
    if not path.is_absolute():
        path = Path(settings.BASE_DIR) / path
    return Tokenizer.from_dir(str(path))


def encode_prompt(model, messages: list[dict]) -> list[int]:
    return tokenizer_for(model).encode_chat(messages)
