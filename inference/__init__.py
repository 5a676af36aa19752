"""Inference workers: the DeepSeek V2/V3 model, checkpoint loading, tokenizer, batching engine, worker.

torch is imported lazily: the web tier imports `inference.tokenizer` and `inference.protocol`,
which must not pull torch in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.model import Transformer


def load_model(path: Any, *, dtype: Any = None, device: Any = None, **kwargs: Any) -> Transformer:
    """Load a Hugging Face-format DeepSeek V2/V3 checkpoint; see `inference.loader.load_model`."""
    from inference.loader import load_model as _load

    return _load(path, dtype=dtype, device=device, **kwargs)


__all__ = ["load_model"]
