"""Products whose rows come out the same whatever the row count: a sequence's result must not depend
on how many sequences share its step.

On CPU, MKL's sgemm (behind `F.linear`, `@` and `torch.bmm` in fp32) takes another code path for
fewer than 4 rows than for 4 or more, and rounds differently there; from 4 rows on, a row's result
is bit for bit the same whatever the row count and its place in the batch (measured on AVX-512 for
every width the models use). The engine's decode products have one row per sequence, so without a
floor a sequence's logits would depend on how many sequences share its step.

`linear` runs a weight that lives across calls (an `nn.Parameter` that needs no grad, fp32 and the
other dtypes oneDNN has an inner product for on this CPU) on a copy packed once into oneDNN's blocked
layout: that kernel's rows come out the same at every row count, one row included (the MoE's experts
rely on the same property, kernels/torch_moe.py), and at one row it reads the weight 2-3x faster
than MKL's sgemm does at the 4-row floor (docs/benchmarks.md, "Engine host path"), with no pad or
slice around it. Other weights, and `bmm`, pad such products to `MIN_ROWS` rows with zeros and drop
the padding after. CUDA tensors are left alone (cuBLAS picks kernels by shape in ways no floor
fixes; see docs/inference.md).

The packed copies (a second copy of each dense weight) are cached per weight tensor like the
experts' (keyed on a weakref, checked against data_ptr() and _version; dropped when the tensor
dies), within `$LEVEE_CPU_LINEAR_PREPACK_MAX_MB` (2048 by default). A weight's path is decided when
it is first seen and kept while it lives, so its rounding never changes mid-run: one past the budget,
or first seen with `$LEVEE_CPU_LINEAR_PREPACK=0`, runs padded from then on.

`linear_group` runs several weights that read the same input (MLA's two down-projections, an MLP's
gate and up) as one product on one packed concatenation of them, returning each weight's output as
a view of its columns: one oneDNN call instead of several, each costing ~15-40 µs of primitive
setup besides its kernel (docs/benchmarks.md). Every output column is still one dot product of one
row, so rows stay independent of the row count (the concatenated width is checked like any other in
tests/kernels/test_rows.py); the values can differ in the last bit from the separate products'
(another blocking of the wider weight). The concatenation is cached like a single weight's packed
copy (dropped when any of its weights dies, remade when any is written in place), within the same
budget; a group that cannot be packed (or has biases) runs its weights one by one through `linear`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.torch_moe import _linear_pointwise, _reorder_op, gemm_for
from kernels.weight_cache import GroupEntry, WeightCache, WeightEntry

MIN_ROWS = 4
PREPACK_ENV = "LEVEE_CPU_LINEAR_PREPACK"
PREPACK_BUDGET_ENV = "LEVEE_CPU_LINEAR_PREPACK_MAX_MB"
PREPACK_BUDGET_MB = 2048


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), x [..., K]; on CPU a row's result does not depend on the row count."""
    rows = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cpu" or rows == 0 or (x.requires_grad and torch.is_grad_enabled()):
        return F.linear(x, weight, bias)  # (training has no use for the floor; oneDNN's op has no backward)
    packed = _packed_for(x, weight)
    if packed is not None:
        return _linear_pointwise()(x, packed, bias, "none", [], "")
    if rows >= MIN_ROWS:
        return F.linear(x, weight, bias)
    padded = F.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, MIN_ROWS - rows))
    return F.linear(padded, weight, bias)[:rows].view(*x.shape[:-1], weight.shape[0])


def linear_group(x: torch.Tensor, weights: tuple[torch.Tensor, ...],
                 biases: tuple[torch.Tensor | None, ...] | None = None) -> list[torch.Tensor]:
    """[linear(x, w, b) for w, b in zip(weights, biases)], on CPU as one product on a packed
    concatenation of the weights where they can be packed and have no biases (views of its output,
    in order); otherwise one by one."""
    if (len(weights) > 1 and x.device.type == "cpu" and (biases is None or all(b is None for b in biases))
            and x.numel() > 0 and not (x.requires_grad and torch.is_grad_enabled())):
        group = _group_for(x, weights)
        if group.packed is not None:
            return list(_linear_pointwise()(x, group.packed, None, "none", [], "").split_with_sizes(group.widths, dim=-1))
    if biases is None:
        return [linear(x, w) for w in weights]
    return [linear(x, w, b) for w, b in zip(weights, biases, strict=True)]


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.bmm(a, b), a [n, M, K], with at least MIN_ROWS rows (M) on CPU."""
    rows = a.shape[1]
    if a.device.type != "cpu" or rows >= MIN_ROWS or rows == 0:
        return torch.bmm(a, b)
    return torch.bmm(F.pad(a, (0, 0, 0, MIN_ROWS - rows)), b)[:, :rows]


class _Entry(WeightEntry):
    """One weight tensor's path: its packed copy, or None for the padded path, while it lives unchanged."""

    def __init__(self, weight: torch.Tensor, packed: torch.Tensor | None):
        super().__init__(_cache, weight)
        self.packed = packed
        self.nbytes = weight.nbytes if packed is not None else 0


_cache: WeightCache[_Entry | _Group] = WeightCache()
_entries = _cache.entries  # id(weight) -> its entry; GroupEntry.key(weights) -> a group's
_lock = _cache.lock


def _packed_for(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy `linear` runs `weight` on, or None (padded path); decided at first sight of a
    parameter (any other weight is a per-call conversion, e.g. the router's fp32 copy: padded)."""
    if not isinstance(weight, torch.nn.Parameter) or weight.is_inference():
        return None
    entry = _entries.get(id(weight))
    if isinstance(entry, _Entry) and entry.valid_for(weight):
        return entry.packed
    with _lock:
        entry = _entries.get(id(weight))
        if isinstance(entry, _Entry) and entry.valid_for(weight):
            return entry.packed
        packed = None
        if _packable(x, weight):
            if _has_room(weight.nbytes):
                reorder = _reorder_op()
                assert reorder is not None  # _packable checked
                with torch.no_grad():
                    packed = reorder(weight)
        _entries[id(weight)] = _Entry(weight, packed)
        return packed


class _Group(GroupEntry):
    """Several weights' packed concatenation, or None: they run one by one."""

    def __init__(self, weights: tuple[torch.Tensor, ...], packed: torch.Tensor | None):
        super().__init__(_cache, weights)
        self.packed = packed
        self.widths = [w.shape[0] for w in weights]
        self.nbytes = sum(w.nbytes for w in weights) if packed is not None else 0


def _group_for(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> _Group:
    """The entry of a group of weights, decided at first sight of the group (and again after any of
    them is written in place): packed when every weight would be packed alone (and the budget has
    room for all), else not."""
    key = GroupEntry.key(weights)
    entry = _entries.get(key)
    if isinstance(entry, _Group) and entry.valid_for(weights):
        return entry
    with _lock:
        entry = _entries.get(key)
        if isinstance(entry, _Group) and entry.valid_for(weights):
            return entry
        packed = None
        if (all(isinstance(w, torch.nn.Parameter) and not w.is_inference() and _packable(x, w) for w in weights)
                and len({w.shape[1] for w in weights}) == 1):
            if _has_room(sum(w.nbytes for w in weights)):
                reorder = _reorder_op()
                assert reorder is not None  # _packable checked
                with torch.no_grad():
                    packed = reorder(torch.cat(weights))
        group = _entries[key] = _Group(weights, packed)
        return group


def _has_room(nbytes: int) -> bool:
    """Whether `nbytes` more of packed copies fit the budget (callers hold the lock)."""
    budget = int(os.environ.get(PREPACK_BUDGET_ENV, "").strip() or PREPACK_BUDGET_MB) * 2**20
    return sum(e.nbytes for e in _entries.values()) + nbytes <= budget


def _packable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A weight oneDNN can pack for this input, with packing not turned off."""
    if os.environ.get(PREPACK_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (not weight.requires_grad and weight.dim() == 2
            and weight.is_contiguous() and weight.dtype == x.dtype and weight.device.type == "cpu"
            and gemm_for(x) == "onednn" and _reorder_op() is not None)


def clear_packed_linears() -> None:
    """Drop every packed dense weight and every decision: weights seen next are decided afresh."""
    _cache.clear()
