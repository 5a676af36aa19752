"""Batched paged MLA decode attention in Triton: every decoding sequence of a layer in one launch.

Legend as in kernels/torch_mla.py (B sequences, nH heads, C latent, R rotary, D = C + R, bs block
size, P = KV_SPLIT). The absorbed query q [B, nH, D] attends over the latent cache [slots, D] in
place: each program reads its sequence's block-table entries on the device and loads the cache rows
they name, so there is no gather into a dense context.

Two kernels, launched back to back:
  _mla_split_kernel    grid (B, max splits, head blocks): one fixed split of P tokens of one
                       sequence, online softmax over tiles of BLOCK_N tokens; writes the split's
                       normalised latent output and its log-sum-exp.
  _mla_combine_kernel  grid (B, head blocks): merges a sequence's splits in order.
Splits past a sequence's length exit at once, and the combine reads only the sequence's own splits,
so a result depends on the sequence alone (the same arithmetic batched or not). The grid's second
axis comes from the longest context in the batch (or a caller's fixed maximum, for graph capture).

Kernels are plain functions jitted on first use in the mode asked for, and call only Triton builtins
(see kernels/triton_moe.py for why).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from kernels.torch_mla import KV_SPLIT, check_decode_inputs

_ADD = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max


def _mla_split_kernel(q_ptr, cache_ptr, table_ptr, lengths_ptr, o_ptr, lse_ptr, n_heads, scale,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      stride_qb, stride_qh, stride_cs, stride_tb, stride_ob, stride_os, stride_oh,
                      stride_lb, stride_ls,
                      C: tl.constexpr, R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                      SPLIT: tl.constexpr):
    b = tl.program_id(0)
    sp = tl.program_id(1)
    hb = tl.program_id(2)
    length = tl.load(lengths_ptr + b)
    start = sp * SPLIT
    if start < length:
        heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        cs = tl.arange(0, BLOCK_C)
        rs = tl.arange(0, BLOCK_R)
        hmask = heads < n_heads
        # --- the absorbed query of BLOCK_H heads: latent part [H, C] and rotary part [H, R]
        q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh
        q_c = tl.load(q_rows + cs[None, :], mask=hmask[:, None] & (cs[None, :] < C), other=0.0)
        q_r = tl.load(q_rows + C + rs[None, :], mask=hmask[:, None] & (rs[None, :] < R), other=0.0)
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        den = tl.full([BLOCK_H], 0.0, tl.float32)
        acc = tl.full([BLOCK_H, BLOCK_C], 0.0, tl.float32)
        # --- tiles of the split, online softmax
        for t0 in range(0, SPLIT, BLOCK_N):
            pos = start + t0 + tl.arange(0, BLOCK_N)
            ok = pos < length
            block = tl.load(table_ptr + b * stride_tb + pos // BLOCK_SIZE, mask=ok, other=0)
            slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE
            rows = cache_ptr + slot[:, None] * stride_cs
            kv_c = tl.load(rows + cs[None, :], mask=ok[:, None] & (cs[None, :] < C), other=0.0)  # [N, C]
            kv_r = tl.load(rows + C + rs[None, :], mask=ok[:, None] & (rs[None, :] < R), other=0.0)  # [N, R]
            s = tl.dot(q_c, tl.trans(kv_c)) + tl.dot(q_r, tl.trans(kv_r))  # [H, N] fp32
            s = tl.where(ok[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m, tl.reduce(s, 1, _MAX))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            den = den * alpha + tl.reduce(p, 1, _ADD)
            acc = acc * alpha[:, None] + tl.dot(p.to(kv_c.dtype), kv_c)
            m = m_new
        # --- the split's normalised output and log-sum-exp
        out = acc / den[:, None]
        o_rows = o_ptr + b * stride_ob + sp * stride_os + heads[:, None] * stride_oh
        tl.store(o_rows + cs[None, :], out, mask=hmask[:, None] & (cs[None, :] < C))
        tl.store(lse_ptr + b * stride_lb + sp * stride_ls + heads, m + tl.log(den), mask=hmask)


def _mla_combine_kernel(o_ptr, lse_ptr, lengths_ptr, out_ptr, n_heads,  # type: ignore[no-untyped-def]  # as above
                        stride_ob, stride_os, stride_oh, stride_lb, stride_ls, stride_xb, stride_xh,
                        C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT: tl.constexpr):
    b = tl.program_id(0)
    hb = tl.program_id(1)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    cs = tl.arange(0, BLOCK_C)
    hmask = heads < n_heads
    cmask = hmask[:, None] & (cs[None, :] < C)
    length = tl.load(lengths_ptr + b)
    n_split = (length + SPLIT - 1) // SPLIT
    big = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for sp in range(0, n_split):
        big = tl.maximum(big, tl.load(lse_ptr + b * stride_lb + sp * stride_ls + heads, mask=hmask, other=0.0))
    den = tl.full([BLOCK_H], 0.0, tl.float32)
    acc = tl.full([BLOCK_H, BLOCK_C], 0.0, tl.float32)
    for sp in range(0, n_split):
        w = tl.exp(tl.load(lse_ptr + b * stride_lb + sp * stride_ls + heads, mask=hmask, other=0.0) - big)
        o = tl.load(o_ptr + b * stride_ob + sp * stride_os + heads[:, None] * stride_oh + cs[None, :],
                    mask=cmask, other=0.0)
        acc += w[:, None] * o
        den += w
    out = acc / den[:, None]
    tl.store(out_ptr + b * stride_xb + heads[:, None] * stride_xh + cs[None, :],
             out.to(out_ptr.dtype.element_ty), mask=cmask)


@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return SimpleNamespace(split=triton.jit(_mla_split_kernel, do_not_specialize=["n_heads"]),
                               combine=triton.jit(_mla_combine_kernel, do_not_specialize=["n_heads"]))
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _interpreting(t: torch.Tensor) -> bool:
    if t.is_cuda:
        return False
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "yes", "on"):
        raise ValueError(f"Triton kernels need CUDA tensors (got device {t.device}) unless TRITON_INTERPRET=1 is set")
    return True


def mla_decode_triton(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, *,
                      scale: float, block_size: int, latent_rank: int, max_splits: int | None = None,
                      block_h: int = 16, block_n: int = 32, num_warps: int = 4) -> torch.Tensor:
    """[B, nH, D] absorbed queries → [B, nH, C] latent outputs in q's dtype.

    block_table [B, nb] int32/int64 and lengths [B] on the device; max_splits: the grid's split axis
    (default: from the block table's width; a fixed value lets a captured graph serve any length up
    to max_splits · KV_SPLIT)."""
    check_decode_inputs(q, cache, block_table, lengths, block_size, latent_rank)
    if q.stride(-1) != 1 or cache.stride(-1) != 1 or block_table.stride(-1) != 1:
        raise ValueError("q, cache and block_table must be contiguous in their last dimension")
    B, nH, D = q.shape
    C, R = latent_rank, D - latent_rank
    splits = max_splits if max_splits is not None else triton.cdiv(block_table.shape[1] * block_size, KV_SPLIT)
    o = torch.empty(B, splits, nH, C, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, splits, nH, dtype=torch.float32, device=q.device)
    out = torch.empty(B, nH, C, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    block_h = max(16, min(block_h, triton.next_power_of_2(nH)))
    k = _kernels(_interpreting(q))
    head_blocks = triton.cdiv(nH, block_h)
    k.split[(B, splits, head_blocks)](
        q, cache, block_table, lengths, o, lse, nH, scale,
        q.stride(0), q.stride(1), cache.stride(0), block_table.stride(0), o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1),
        C=C, R=R, BLOCK_C=triton.next_power_of_2(C), BLOCK_R=max(16, triton.next_power_of_2(R)),
        BLOCK_H=block_h, BLOCK_N=min(block_n, KV_SPLIT), BLOCK_SIZE=block_size, SPLIT=KV_SPLIT,
        num_warps=num_warps)
    k.combine[(B, head_blocks)](
        o, lse, lengths, out, nH, o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), C=C, BLOCK_C=triton.next_power_of_2(C), BLOCK_H=block_h, SPLIT=KV_SPLIT,
        num_warps=num_warps)
    return out
