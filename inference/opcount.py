"""Counting what a piece of code asks of torch: ATen ops and the ops that make the host wait.

    with OpCounter() as ops:
        engine_step()
    ops.total, ops.syncs, ops.by_name

Every op reaching the dispatcher is counted (views too: each is Python and dispatch work on the
host, which is what bounds a small model's decode step). `SYNCING` ops make the host wait for the
device: a scalar read (`.item()`, `int(t)`, `bool(t)`), ops whose output size depends on values
(`nonzero`, `masked_select`, `unique`), copies from an accelerator to the CPU, and `Tensor.tolist()`
(which reads a CPU tensor without the dispatcher, so it is counted by wrapping the method while the
counter is active: on a device it is a device→host copy).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = frozenset({"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
                     "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default"})


class OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's mode base is unannotated
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.by_name: Counter[str] = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        name = str(func)
        self.by_name[name] += 1
        if name in SYNCING or _copies_to_host(name, args, kwargs or {}):
            self.syncs += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> OpCounter:
        self._tolist = torch.Tensor.tolist
        real, counter = self._tolist, self

        def tolist(t: torch.Tensor) -> Any:
            counter.syncs += 1
            counter.by_name["Tensor.tolist"] += 1
            return real(t)

        torch.Tensor.tolist = tolist  # type: ignore[method-assign,assignment]
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]
        super().__exit__(*exc)  # type: ignore[no-untyped-call]

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


def _copies_to_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if name not in ("aten._to_copy.default", "aten.copy_.default"):
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name == "aten._to_copy.default":
        dev = kwargs.get("device")
        return bool(tensors) and tensors[0].device.type != "cpu" and dev is not None and torch.device(dev).type == "cpu"
    return len(tensors) >= 2 and tensors[0].device.type == "cpu" and tensors[1].device.type != "cpu"
