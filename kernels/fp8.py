"""Block-scaled FP8 weights as DeepSeek publishes them, and the CPU side of computing with them.

A quantized weight is `float8_e4m3fn` [..., N, K] with a float32 `scale_inv` [..., ⌈N/bn⌉, ⌈K/bk⌉]
(bn = bk = 128 in every published checkpoint): W[i, j] = fp8[i, j] · scale_inv[i // bn, j // bk].
The last row and column of blocks are partial when N or K is not a multiple of the block.

Compute is W8A16: weights are dequantized to the activations' dtype and multiplied there (no FP8
activations). On CPU that is an explicit dequantization (`dequantize`), optionally kept in a
process-wide cache bounded by `$LEVEE_FP8_CACHE_MB` (default 1024; 0 = dequantize on every call),
filled first come, first served: once the budget is spent, the remaining weights are dequantized
per call. On CUDA the Triton kernels read the FP8 bytes and scale them inside the GEMM
(kernels/triton_moe.py, kernels/fp8_linear.py); nothing here runs on that path.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = (128, 128)
CACHE_ENV = "LEVEE_FP8_CACHE_MB"
CACHE_DEFAULT_MB = 1024


def scale_shape(n: int, k: int, block: tuple[int, int] = BLOCK) -> tuple[int, int]:
    """The block-scale grid of an [n, k] weight."""
    return (-(-n // block[0]), -(-k // block[1]))


def expand_scales(scale_inv: torch.Tensor, n: int, k: int, block: tuple[int, int] = BLOCK) -> torch.Tensor:
    """scale_inv [..., ⌈n/bn⌉, ⌈k/bk⌉] → one scale per element [..., n, k] (edge blocks cut)."""
    s = scale_inv.repeat_interleave(block[0], dim=-2).repeat_interleave(block[1], dim=-1)
    return s[..., :n, :k]


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32,
               block: tuple[int, int] = BLOCK) -> torch.Tensor:
    """fp8 [..., N, K] · block scales → dtype [..., N, K], computed in fp32 then rounded once."""
    n, k = weight.shape[-2:]
    want = (*weight.shape[:-2], *scale_shape(n, k, block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"dequantize: scale_inv has shape {tuple(scale_inv.shape)}, expected {want} for a "
                         f"weight of shape {tuple(weight.shape)} in {block[0]}x{block[1]} blocks")
    return (weight.float() * expand_scales(scale_inv.float(), n, k, block)).to(dtype)


def dequantize_w13(weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32,
                   block: tuple[int, int] = BLOCK) -> torch.Tensor:
    """A stacked [..., 2I, H] gate/up weight whose scales are the gate's block grid followed by the
    up's ([..., 2⌈I/bn⌉, ⌈H/bk⌉]; the same as the stacked grid when I is a multiple of bn)."""
    inter = weight.shape[-2] // 2
    nb = -(-inter // block[0])
    gate = dequantize(weight[..., :inter, :], scale_inv[..., :nb, :], dtype, block)
    up = dequantize(weight[..., inter:, :], scale_inv[..., nb:, :], dtype, block)
    return torch.cat((gate, up), dim=-2)


def w13_scale_shape(inter: int, hidden: int, block: tuple[int, int] = BLOCK) -> tuple[int, int]:
    rows, cols = scale_shape(inter, hidden, block)
    return (2 * rows, cols)


def quantize(weight: torch.Tensor, block: tuple[int, int] = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantize [N, K] like DeepSeek's converter: per block, scale_inv = amax / 448.

    Returns (fp8 [N, K], scale_inv fp32 [⌈N/bn⌉, ⌈K/bk⌉]). An all-zero block gets scale 1.
    """
    w = weight.float()
    n, k = w.shape
    rows, cols = scale_shape(n, k, block)
    padded = w.new_zeros(rows * block[0], cols * block[1])
    padded[:n, :k] = w
    tiles = padded.view(rows, block[0], cols, block[1]).abs().amax(dim=(1, 3))
    scale_inv = torch.where(tiles > 0, tiles / FP8_MAX, torch.ones_like(tiles))
    q = (w / expand_scales(scale_inv, n, k, block)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale_inv


def cache_budget() -> int:
    raw = os.environ.get(CACHE_ENV, "").strip()
    return (int(raw) if raw else CACHE_DEFAULT_MB) * 2**20


class DequantCache:
    """Dequantized copies of FP8 weights (or of single experts of a stacked one), within a budget.

    Entries are keyed on the FP8 tensor (a weakref: an entry goes when its tensor does) and an
    index (-1 for a whole weight, e for expert e of a stacked [E, N, K] weight) and dtype; an
    in-place change to the tensor (its _version) invalidates its entries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int, torch.dtype], tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype, index: int = -1,
            block: tuple[int, int] = BLOCK, *, stacked_halves: bool = False) -> torch.Tensor:
        """The dequantized weight (index -1) or expert `index` of a stacked one. stacked_halves: the
        weight is w13 ([gate; up] rows, each half with its own block grid; see dequantize_w13)."""
        key = (id(weight), index, dtype)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is weight and entry[1] == weight._version:
                self.hits += 1
                return entry[2]
        self.misses += 1
        src, scale = (weight, scale_inv) if index < 0 else (weight[index], scale_inv[index])
        out = dequantize_w13(src, scale, dtype, block) if stacked_halves else dequantize(src, scale, dtype, block)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[2].nbytes
            if self.bytes + out.nbytes <= cache_budget():
                ref = weakref.ref(weight, self._forget(id(weight)))
                self._entries[key] = (ref, weight._version, out)
                self.bytes += out.nbytes
        return out

    def _forget(self, ident: int) -> Callable[[weakref.ref[torch.Tensor]], None]:
        def forget(_: weakref.ref[torch.Tensor]) -> None:
            with self._lock:
                for key in [k for k in self._entries if k[0] == ident]:
                    self.bytes -= self._entries.pop(key)[2].nbytes

        return forget

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = self.hits = self.misses = 0


CACHE = DequantCache()
