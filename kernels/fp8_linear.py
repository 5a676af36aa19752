"""A block-FP8 GEMM in Triton for dense linears: y = x · dequant(w)ᵀ, W8A16.

x [M, K] in fp16/bf16/fp32, w float8_e4m3fn [N, K] with fp32 scale_inv [⌈N/128⌉, ⌈K/128⌉]. Each
program computes a BLOCK_M × BLOCK_N tile; weight tiles are loaded as FP8 (half the bytes of bf16),
scaled by their block's scale and converted to x's dtype before the dot, accumulated in fp32.
Runs compiled on CUDA tensors and under TRITON_INTERPRET=1 on CPU tensors (tests). Like
kernels/triton_moe.py the kernel is wrapped with triton.jit on first use, per mode.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernels.checks import check
from kernels.fp8 import BLOCK, FP8_DTYPE, scale_shape


def _fp8_linear_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,  # type: ignore[no-untyped-def]
                       stride_xm, stride_wn, stride_sn, stride_ym,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SB_N: tl.constexpr, SB_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m % M  # wrapped rows and columns are read, never stored
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        kk = k * BLOCK_K + offs_k
        k_ok = kk < K
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + kk[None, :], mask=k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_wn + kk[:, None], mask=k_ok[:, None], other=0.0)
        scale = tl.load(s_ptr + (cols // SB_N)[None, :] * stride_sn + (tl.minimum(kk, K - 1) // SB_K)[:, None])
        acc = tl.dot(x, (w.to(tl.float32) * scale).to(x.dtype), acc)
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@functools.cache
def _kernel(interpret: bool) -> triton.runtime.JITFunction:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return triton.jit(_fp8_linear_kernel, do_not_specialize=["M"])
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def fp8_linear_triton(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """x [M, K] · dequant(weight [N, K])ᵀ → [M, N] in x's dtype."""
    check(x.dim() == 2 and weight.dim() == 2, f"fp8_linear: x and weight must be 2-D, got {tuple(x.shape)} "
          f"and {tuple(weight.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    check(weight.shape[1] == k, f"fp8_linear: weight {tuple(weight.shape)} must be [N, {k}]")
    check(weight.dtype == FP8_DTYPE, f"fp8_linear: weight must be float8_e4m3fn, got {weight.dtype}")
    check(tuple(scale_inv.shape) == scale_shape(n, k, BLOCK),
          f"fp8_linear: scale_inv must be {scale_shape(n, k, BLOCK)}, got {tuple(scale_inv.shape)}")
    check(x.is_contiguous() and weight.is_contiguous() and scale_inv.is_contiguous(),
          "fp8_linear: x, weight and scale_inv must be contiguous")
    interpret = not x.is_cuda
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n, block_k = 64, 64 if interpret else 128
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _kernel(interpret)[grid](x, weight, scale_inv, y, m, n, k,
                             x.stride(0), weight.stride(0), scale_inv.stride(0), y.stride(0),
                             BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SB_N=BLOCK[0], SB_K=BLOCK[1],
                             num_warps=4)
    return y
