"""Caches keyed by a weight tensor's identity (the CPU paths' packed copies: kernels.rows for dense
linears, kernels.torch_moe for experts).

An entry remembers its tensor weakly and is dropped when the tensor is collected; while it lives it
is valid only for the same tensor with the same storage and no in-place write since
(`valid_for`), so a reloaded or updated weight gets a fresh entry instead of a stale copy. A
`GroupEntry` does the same for several tensors together (kernels.rows' packed concatenations, keyed
on the tuple of their ids): dropped when any of them is collected, valid while all are unchanged.
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

    def owns(self, ref: weakref.ref[torch.Tensor]) -> bool:
        return self.ref is ref

    def valid_for(self, weight: torch.Tensor) -> bool:
        return self.ref() is weight and self.data_ptr == weight.data_ptr() and self.version == weight._version


class GroupEntry:
    """What a cache keeps for several weight tensors together, under the key `GroupEntry.key(weights)`."""

    def __init__(self, cache: WeightCache[Any], weights: tuple[torch.Tensor, ...]):
        key = self.key(weights)
        self.refs = tuple(weakref.ref(w, cache.forgetter(key)) for w in weights)
        self.data_ptrs = tuple(w.data_ptr() for w in weights)
        self.versions = tuple(w._version for w in weights)

    @staticmethod
    def key(weights: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
        return tuple(id(w) for w in weights)

    def owns(self, ref: weakref.ref[torch.Tensor]) -> bool:
        return any(r is ref for r in self.refs)

    def valid_for(self, weights: tuple[torch.Tensor, ...]) -> bool:
        if len(weights) != len(self.refs):
            return False
        for ref, ptr, version, w in zip(self.refs, self.data_ptrs, self.versions, weights, strict=True):
            if ref() is not w or ptr != w.data_ptr() or version != w._version:
                return False
        return True


E = TypeVar("E", bound="WeightEntry | GroupEntry")


class WeightCache(Generic[E]):
    """id(weight) -> entry, with the lock its users take around a lookup-then-insert (reentrant: a
    weakref callback may run inside a locked section)."""

    def __init__(self) -> None:
        self.entries: dict[Any, E] = {}  # id(weight), or GroupEntry.key(weights)
        self.lock = threading.RLock()

    def forgetter(self, key: Any) -> Callable[[weakref.ref[torch.Tensor]], None]:
        def forget(ref: weakref.ref[torch.Tensor]) -> None:
            with self.lock:
                entry = self.entries.get(key)
                if entry is not None and entry.owns(ref):
                    del self.entries[key]

        return forget

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
