"""Linear layers: bf16/fp32 or block-FP8 weights, whole or split across tensor-parallel ranks.

`Linear` holds `weight` [N, K] in the compute dtype, or in float8_e4m3fn with `weight_scale_inv`
[⌈N/128⌉, ⌈K/128⌉] fp32 beside it (DeepSeek's published format). FP8 compute is W8A16: on CUDA
the block-FP8 Triton GEMM (kernels/fp8_linear.py) reads the FP8 bytes and scales tiles as it
loads them; elsewhere the weight is dequantized to the activations' dtype, kept in kernels/fp8.py's
budgeted cache ($LEVEE_FP8_CACHE_MB) or, past the budget, dequantized on every call.
Activations are never quantized (DeepSeek's "dynamic" per-128 FP8 activations are not used).

Tensor parallelism (`TensorParallel`): a *column*-parallel Linear holds this rank's slice of the
output rows and returns its slice of y; a *row*-parallel one holds a slice of the input columns,
takes the matching slice of x and all-reduces the partial products (bias added once, after);
`gather=True` (the vocab-parallel head) all-gathers the column slices back into the full output.
`VocabEmbedding` holds a slice of the vocabulary and all-reduces the looked-up rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import rows
from kernels.fp8 import CACHE, dequantize


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: rank of world, over a torch.distributed group.

    world = 1 (the default, `SINGLE`) means no communication at all.
    """

    rank: int = 0
    world: int = 1
    group: Any = field(default=None, compare=False)

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's [start, end) of n items split as evenly as possible (earlier ranks get fewer)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def sizes(self, n: int) -> list[int]:
        return [n * (r + 1) // self.world - n * r // self.world for r in range(self.world)]

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t, group=self.group)
        return t

    def all_gather_last(self, t: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate every rank's slice of the last dimension (slices sized by `sizes(total)`)."""
        if self.world == 1:
            return t
        sizes = self.sizes(total)
        width = max(sizes)
        padded = F.pad(t, (0, width - t.shape[-1])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded, group=self.group)
        return torch.cat([p[..., :s] for p, s in zip(parts, sizes, strict=True)], dim=-1)


SINGLE = TensorParallel()


class Linear(nn.Module):
    """y = x·Wᵀ (+ b), W dense or block-FP8; optionally one rank's share of a parallel linear.

    split: None (whole), "column" (this rank's output rows) or "row" (this rank's input columns,
    all-reduced; reduce=False leaves the partial sums to the caller, who adds a bias-free row-parallel
    output to others before one all-reduce). in_features/out_features are the *global* sizes.
    """

    weight_scale_inv: nn.Parameter | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 tp: TensorParallel = SINGLE, split: str | None = None, gather: bool = False,
                 reduce: bool = True) -> None:
        super().__init__()
        if split not in (None, "column", "row"):
            raise ValueError(f"Linear: split must be None, 'column' or 'row', got {split!r}")
        self.in_features, self.out_features = in_features, out_features
        self.tp, self.split, self.gather, self.reduce = tp, split if tp.world > 1 else None, gather, reduce
        rows = (0, out_features) if self.split != "column" else tp.bounds(out_features)
        cols = (0, in_features) if self.split != "row" else tp.bounds(in_features)
        self.rows, self.cols = rows, cols  # this rank's slice of the global [N, K] weight
        self.weight = nn.Parameter(torch.empty(rows[1] - rows[0], cols[1] - cols[0]))
        self.bias = nn.Parameter(torch.empty(rows[1] - rows[0])) if bias else None
        self.weight_scale_inv = None

    @property
    def quantized(self) -> bool:
        return self.weight_scale_inv is not None

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The local weight in `dtype` (dequantized, through the cache, when FP8)."""
        if self.weight_scale_inv is None:
            return self.weight if self.weight.dtype == dtype else self.weight.to(dtype)
        out: torch.Tensor = CACHE.get(self.weight, self.weight_scale_inv, dtype)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale_inv
        bias = self.bias if self.split != "row" else None
        if scale is not None and x.is_cuda and _triton_linear() is not None:
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            gemm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = _triton_linear()
            y = gemm(flat, self.weight, scale).view(*x.shape[:-1], -1)
            if bias is not None:
                y = y + bias
        else:
            y = rows.linear(x, self.dense_weight(x.dtype), bias)  # a row's result independent of the row count
        if self.split == "row":
            if self.reduce:
                y = self.tp.all_reduce(y.contiguous())
            if self.bias is not None:
                y = y + self.bias
        if self.gather and self.split == "column":
            y = self.tp.all_gather_last(y, self.out_features)
        return y

    def extra_repr(self) -> str:
        kind = "fp8" if self.quantized else str(self.weight.dtype).removeprefix("torch.")
        return f"in={self.in_features}, out={self.out_features}, {kind}, split={self.split}"


def fused(x: torch.Tensor, *linears: Linear) -> list[torch.Tensor]:
    """[lin(x) for lin in linears] for Linears that read the same input; on CPU, dense whole or
    column-parallel ones (each rank's local slices: a fused rank still returns its own slice of
    each output) run as one product on a packed concatenation (kernels.rows.linear_group)."""
    if x.device.type != "cpu" or any(lin.quantized or lin.split == "row" or lin.gather for lin in linears):
        return [lin(x) for lin in linears]
    return rows.linear_group(x, tuple(lin.dense_weight(x.dtype) for lin in linears), tuple(lin.bias for lin in linears))


def _triton_linear() -> Any:
    from kernels import triton_available

    if not triton_available():
        return None
    from kernels.fp8_linear import fp8_linear_triton

    return fp8_linear_triton


class VocabEmbedding(nn.Module):
    """nn.Embedding whose rows may be split over tensor-parallel ranks (vocab-parallel)."""

    def __init__(self, num_embeddings: int, dim: int, *, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.num_embeddings = num_embeddings
        self.rows = tp.bounds(num_embeddings) if tp.world > 1 else (0, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.rows[1] - self.rows[0], dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world == 1:
            return F.embedding(ids, self.weight)
        lo, hi = self.rows
        here = (ids >= lo) & (ids < hi)
        out = F.embedding(torch.where(here, ids - lo, 0), self.weight) * here[..., None].to(self.weight.dtype)
        return self.tp.all_reduce(out.contiguous())


def shard(tensor: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int] | None = None) -> torch.Tensor:
    """The [rows, cols] slice of a global weight (cols: all when None)."""
    t = tensor[rows[0]:rows[1]]
    if cols is not None:
        t = t[:, cols[0]:cols[1]]
    return t


def shard_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
              dtype: torch.dtype, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This rank's slice of an FP8 weight: (fp8, scales) when the slice starts on block boundaries
    (and ends on one or at the edge), else the slice dequantized to `dtype` and no scales."""

    def aligned(span: tuple[int, int], size: int, b: int) -> bool:
        return span[0] % b == 0 and (span[1] % b == 0 or span[1] == size)

    n, k = weight.shape
    if aligned(rows, n, block[0]) and aligned(cols, k, block[1]):
        s_rows = (rows[0] // block[0], -(-rows[1] // block[0]))
        s_cols = (cols[0] // block[1], -(-cols[1] // block[1]))
        return shard(weight, rows, cols), shard(scale_inv, s_rows, s_cols)
    return shard(dequantize(weight, scale_inv, dtype, block), rows, cols), None
