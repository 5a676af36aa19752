"""Caches keyed by a weight tensor's identity (the CPU paths' packed copies: kernels.rows for dense
linears, kernels.torch_moe for experts).

An entry remembers its tensor weakly and is dropped when the tensor is collected; while it lives it
is valid only for the same tensor with the same storage and no in-place write since
(`valid_for`), so a reloaded or updated weight gets a fresh entry instead of a stale copy.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch


class WeightEntry:
    """What a cache keeps for one weight tensor; subclasses add their payload."""

    def __init__(self, cache: WeightCache[Any], weight: torch.Tensor):
        self.ref = weakref.ref(weight, cache.forgetter(id(weight)))
        self.data_ptr = weight.data_ptr()
        self.version = weight._version

    def valid_for(self, weight: torch.Tensor) -> bool:
        return self.ref() is weight and self.data_ptr == weight.data_ptr() and self.version == weight._version


E = TypeVar("E", bound=WeightEntry)


class WeightCache(Generic[E]):
    """id(weight) -> entry, with the lock its users take around a lookup-then-insert (reentrant: a
    weakref callback may run inside a locked section)."""

    def __init__(self) -> None:
        self.entries: dict[int, E] = {}
        self.lock = threading.RLock()

    def forgetter(self, key: int) -> Callable[[weakref.ref[torch.Tensor]], None]:
        def forget(ref: weakref.ref[torch.Tensor]) -> None:
            with self.lock:
                entry = self.entries.get(key)
                if entry is not None and entry.ref is ref:
                    del self.entries[key]

        return forget

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
