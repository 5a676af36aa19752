"""Row-count floors that keep a row's result independent of how many rows a CPU product has.

On CPU, MKL's sgemm (behind `F.linear`, `@` and `torch.bmm` in fp32) takes another code path for
fewer than 4 rows than for 4 or more, and rounds differently there; from 4 rows on, a row's result
is bit for bit the same whatever the row count and its place in the batch (measured on AVX-512 for
every width the models use). The engine's decode products have one row per sequence, so without a
floor a sequence's logits would depend on how many sequences share its step. `linear` and `bmm`
pad such products to `MIN_ROWS` rows with zeros and drop the padding after: the extra rows cost
about nothing (the product is bound by reading the weight). CUDA tensors are left alone (cuBLAS
picks kernels by shape in ways no floor fixes; see docs/inference.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_ROWS = 4


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), x [..., K], with at least MIN_ROWS rows on CPU."""
    rows = x.numel() // max(x.shape[-1], 1)
    if x.device.type != "cpu" or rows >= MIN_ROWS or rows == 0:
        return F.linear(x, weight, bias)
    padded = F.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, MIN_ROWS - rows))
    return F.linear(padded, weight, bias)[:rows].view(*x.shape[:-1], weight.shape[0])


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.bmm(a, b), a [n, M, K], with at least MIN_ROWS rows (M) on CPU."""
    rows = a.shape[1]
    if a.device.type != "cpu" or rows >= MIN_ROWS or rows == 0:
        return torch.bmm(a, b)
    return torch.bmm(F.pad(a, (0, 0, 0, MIN_ROWS - rows)), b)[:, :rows]
