"""Fused MoE in Triton: align → GEMM 1 (gate/up, SiLU·up) → GEMM 2 (down, × routing weight) → Σ_k.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token,
P = T·k (token, expert) pairs; pair p belongs to token p // k.

Weights are stacked ([E, 2I, H] and [E, H, I]) and a block finds its expert by an integer offset,
which is also what lets the Triton interpreter run every kernel on CPU tensors.

The kernels below are plain functions; `_kernels(interpret)` wraps them with `triton.jit` on first
use. Deciding interpret-or-compile at call time rather than import time means a process can import
this module before or after TRITON_INTERPRET is set (as a pytest session that mixes suites does).
For the same reason the kernels call only Triton builtins, never the @jit functions of
triton.language.standard (tl.sum, tl.cumsum, tl.cdiv, tl.sigmoid, tl.zeros): those are jitted once,
in whatever mode was on when triton was imported, and a compiled one cannot run in the interpreter.
Sums and prefix sums go through tl.reduce / tl.associative_scan with the standard add combiner,
which both the compiler and the interpreter (as numpy) understand.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from kernels.checks import MoEInputError, check, check_contiguous, check_moe_inputs
from kernels.configs import DEFAULT_SHARED_MEMORY, Config, fit_shared_memory, gemm_configs, get_config

__all__ = ["MoEInputError", "fused_moe_triton", "moe_align", "moe_decode", "moe_gemm1", "moe_gemm2", "moe_gemv2_split",
           "moe_sum"]


_ADD = tl.standard._sum_combine  # see the module docstring


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _moe_count_kernel(topk_ids_ptr, chunk_counts_ptr, num_pairs, num_experts,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      E_PAD: tl.constexpr, CHUNK: tl.constexpr):
    """chunk_counts[c, e] = how many of the pairs in chunk c go to expert e."""
    pid = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(topk_ids_ptr + offs, mask=offs < num_pairs, other=-1).to(tl.int32)
    ok = (offs < num_pairs) & (ids >= 0) & (ids < num_experts)
    hit = ((ids[:, None] == experts[None, :]) & ok[:, None]).to(tl.int32)
    tl.store(chunk_counts_ptr + pid * E_PAD + experts, tl.reduce(hit, 0, _ADD))


def _moe_align_kernel(topk_ids_ptr, chunk_counts_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      num_pairs, num_experts, num_chunks, num_m_blocks,
                      BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, CHUNK: tl.constexpr,
                      ROWS: tl.constexpr, SINGLE: tl.constexpr):
    """Group pair ids by expert, each expert's run padded to a multiple of BLOCK_M.

    Writes sorted_ids[num_m_blocks·BLOCK_M] (pair ids, num_pairs in padding), expert_ids[num_m_blocks]
    (-1 for blocks past the end) and num_post_pad[0] (the padded length). Program c places the pairs
    of chunk c; within an expert, pairs keep their order. No atomics, so the layout is deterministic.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    experts = tl.arange(0, E_PAD)
    offs = pid * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(topk_ids_ptr + offs, mask=offs < num_pairs, other=-1).to(tl.int32)
    ok = (offs < num_pairs) & (ids >= 0) & (ids < num_experts)
    hit = ((ids[:, None] == experts[None, :]) & ok[:, None]).to(tl.int32)  # [CHUNK, E_PAD]

    # --- pairs per expert: in all, and in the chunks before this one
    if SINGLE:
        counts = tl.reduce(hit, 0, _ADD)
        before = tl.full([E_PAD], 0, tl.int32)
    else:
        counts = tl.full([E_PAD], 0, tl.int32)
        before = tl.full([E_PAD], 0, tl.int32)
        for r0 in range(0, num_chunks, ROWS):
            rows = r0 + tl.arange(0, ROWS)
            tile = tl.load(chunk_counts_ptr + rows[:, None] * E_PAD + experts[None, :],
                           mask=rows[:, None] < num_chunks, other=0)
            counts += tl.reduce(tile, 0, _ADD)
            before += tl.reduce(tl.where(rows[:, None] < pid, tile, 0), 0, _ADD)

    # --- each expert's padded run [starts, ends)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.associative_scan(padded, 0, _ADD)
    starts = ends - padded
    total = tl.reduce(padded, 0, _ADD)

    # --- this chunk's pairs into their runs
    rank = tl.associative_scan(hit, 0, _ADD)  # 1-based rank of a pair among this chunk's pairs of its expert
    pos = tl.reduce(tl.where(hit != 0, (starts + before)[None, :] + rank - 1, 0), 1, _ADD)
    tl.store(sorted_ids_ptr + pos, offs, mask=ok)

    # --- padding slots get the sentinel, blocks get their expert; programs share the slots
    fill_end = starts + counts
    max_len = num_m_blocks * BLOCK_M
    for s0 in range(pid * CHUNK, max_len, nprog * CHUNK):
        slots = s0 + tl.arange(0, CHUNK)
        owner = tl.reduce((ends[None, :] <= slots[:, None]).to(tl.int32), 1, _ADD)
        owner_fill_end = tl.reduce(tl.where(experts[None, :] == owner[:, None], fill_end[None, :], 0), 1, _ADD)
        sentinel = tl.full([CHUNK], 0, tl.int32) + num_pairs
        tl.store(sorted_ids_ptr + slots, sentinel, mask=(slots >= owner_fill_end) & (slots < max_len))
    for b0 in range(pid * CHUNK, num_m_blocks, nprog * CHUNK):
        blocks = b0 + tl.arange(0, CHUNK)
        first = blocks * BLOCK_M
        owner = tl.reduce((ends[None, :] <= first[:, None]).to(tl.int32), 1, _ADD)
        owner = tl.where(first < total, owner, -1)
        tl.store(expert_ids_ptr + blocks, owner, mask=blocks < num_m_blocks)
    if pid == 0:
        tl.store(num_post_pad_ptr, total)


def _moe_gemm1_kernel(a_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_pad_ptr,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      num_pairs, top_k, N, K, num_m_blocks,
                      stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_om, stride_on,
                      s_ptr, stride_se, stride_sn, stride_sk,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                      HAS_SCALE: tl.constexpr, SB_N: tl.constexpr, SB_K: tl.constexpr):
    """out[p, n] = silu(x_t · w13[e, n]) · (x_t · w13[e, N + n]) for pair p of token t, expert e.

    HAS_SCALE: w13 is FP8 with SB_N×SB_K block scales (the gate's grid, then the up's), applied to
    each weight tile as it is loaded (W8A16)."""
    # --- which block: grouped ordering, so blocks that share an expert run side by side
    pid = tl.program_id(0)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    pids_per_group = GROUP_M * num_pid_n
    first_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    if pid_m * BLOCK_M >= tl.load(num_post_pad_ptr):
        return

    # --- rows (gathered tokens) and columns (gate rows; up rows are N further on)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ids_ptr + offs_m)
    row_ok = pairs < num_pairs
    tokens = tl.where(row_ok, pairs // top_k, 0).to(tl.int64)  # padding reads row 0, never stored
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n % N  # columns past N wrap to valid rows and are never stored
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + tokens[:, None] * stride_am + offs_k[None, :] * stride_ak
    g_ptrs = w_ptr + expert * stride_we + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk
    u_ptrs = g_ptrs + N * stride_wn

    # --- main loop
    acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc_u = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            g = tl.load(g_ptrs)
            u = tl.load(u_ptrs)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=k_ok[:, None], other=0.0)
            u = tl.load(u_ptrs, mask=k_ok[:, None], other=0.0)
        if HAS_SCALE:
            kk = tl.minimum(k * BLOCK_K + offs_k, K - 1)  # columns past K are zero; any scale does
            s_row = s_ptr + expert * stride_se + (kk // SB_K)[:, None] * stride_sk
            s_gate = tl.load(s_row + (cols // SB_N)[None, :] * stride_sn)
            s_up = tl.load(s_row + ((N + SB_N - 1) // SB_N + cols // SB_N)[None, :] * stride_sn)
            g = (g.to(tl.float32) * s_gate).to(a.dtype)
            u = (u.to(tl.float32) * s_up).to(a.dtype)
        acc_g = tl.dot(a, g, acc_g)
        acc_u = tl.dot(a, u, acc_u)
        a_ptrs += BLOCK_K * stride_ak
        g_ptrs += BLOCK_K * stride_wk
        u_ptrs += BLOCK_K * stride_wk

    # --- epilogue: silu(gate) · up, stored at the pair's row
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(g) = g·sigmoid(g)
    out_ptrs = out_ptr + pairs[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, act.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n[None, :] < N))


def _moe_gemm2_kernel(a_ptr, w_ptr, out_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      num_post_pad_ptr, num_pairs, N, K, num_m_blocks,
                      stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_om, stride_on,
                      s_ptr, stride_se, stride_sn, stride_sk,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                      HAS_SCALE: tl.constexpr, SB_N: tl.constexpr, SB_K: tl.constexpr):
    """out[p, n] = weight_p · (act_p · w2[e, n]) for pair p routed to expert e (HAS_SCALE as GEMM 1)."""
    # --- which block
    pid = tl.program_id(0)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    pids_per_group = GROUP_M * num_pid_n
    first_m = (pid // pids_per_group) * GROUP_M
    group_rows = tl.minimum(num_m_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    if pid_m * BLOCK_M >= tl.load(num_post_pad_ptr):
        return

    # --- rows are pairs (GEMM 1 wrote them at the pair's row), columns are hidden units
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ids_ptr + offs_m)
    row_ok = pairs < num_pairs
    rows = tl.where(row_ok, pairs, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_ptrs = w_ptr + expert * stride_we + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk

    # --- main loop
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        if HAS_SCALE:
            kk = tl.minimum(k * BLOCK_K + offs_k, K - 1)
            scale = tl.load(s_ptr + expert * stride_se + (kk // SB_K)[:, None] * stride_sk
                            + (cols // SB_N)[None, :] * stride_sn)
            w = (w.to(tl.float32) * scale).to(a.dtype)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    # --- epilogue: scale by the routing weight
    weight = tl.load(topk_weights_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    out_ptrs = out_ptr + rows[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_n[None, :] < N))


def _moe_gemv1_kernel(x_ptr, w_ptr, out_ptr, topk_ids_ptr, N, K, top_k,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      stride_xm, stride_we, stride_wn, stride_om,
                      s_ptr, stride_se, stride_sn, stride_sk,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                      HAS_SCALE: tl.constexpr, SB_N: tl.constexpr, SB_K: tl.constexpr):
    """Decode GEMM 1 without align: one program per (pair, column block), no tensor cores.

    act[p, n] = silu(x_t · w13[e, n]) · (x_t · w13[e, N + n]); weights are read along K (contiguous).
    """
    pair = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    expert = tl.load(topk_ids_ptr + pair).to(tl.int64)
    x_ptrs = x_ptr + (pair // top_k) * stride_xm + offs_k
    g_ptrs = w_ptr + expert * stride_we + cols[:, None] * stride_wn + offs_k[None, :]
    u_ptrs = g_ptrs + N * stride_wn
    # --- elementwise products accumulate in a tile; one reduction at the end
    acc_g = tl.full((BLOCK_N, BLOCK_K), 0.0, tl.float32)
    acc_u = tl.full((BLOCK_N, BLOCK_K), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            g = tl.load(g_ptrs)
            u = tl.load(u_ptrs)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=k_ok, other=0.0)
            g = tl.load(g_ptrs, mask=k_ok[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=k_ok[None, :], other=0.0)
        xf = x.to(tl.float32)[None, :]
        if HAS_SCALE:
            kk = tl.minimum(k * BLOCK_K + offs_k, K - 1)
            s_row = s_ptr + expert * stride_se + (kk // SB_K)[None, :] * stride_sk
            xg = xf * tl.load(s_row + (cols // SB_N)[:, None] * stride_sn)
            xu = xf * tl.load(s_row + ((N + SB_N - 1) // SB_N + cols // SB_N)[:, None] * stride_sn)
            acc_g += g.to(tl.float32) * xg
            acc_u += u.to(tl.float32) * xu
        else:
            acc_g += g.to(tl.float32) * xf
            acc_u += u.to(tl.float32) * xf
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    gate = tl.reduce(acc_g, 1, _ADD)
    up = tl.reduce(acc_u, 1, _ADD)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + pair * stride_om + offs_n, act.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def _moe_gemv2_kernel(a_ptr, w_ptr, out_ptr, topk_ids_ptr, topk_weights_ptr, N, K, top_k,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                      stride_am, stride_we, stride_wn, stride_om,
                      s_ptr, stride_se, stride_sn, stride_sk,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                      HAS_SCALE: tl.constexpr, SB_N: tl.constexpr, SB_K: tl.constexpr):
    """Decode GEMM 2 and the sum over k in one: one program per (token, column block).

    out[t, n] = Σ_j weight_j · act[t·k + j] · w2[e_j, n], summed in fp32 in a fixed order.
    """
    token = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    total = tl.full((BLOCK_N,), 0.0, tl.float32)
    for j in range(0, top_k):
        pair = token * top_k + j
        expert = tl.load(topk_ids_ptr + pair).to(tl.int64)
        weight = tl.load(topk_weights_ptr + pair).to(tl.float32)
        a_ptrs = a_ptr + pair * stride_am + offs_k
        w_ptrs = w_ptr + expert * stride_we + cols[:, None] * stride_wn + offs_k[None, :]
        acc = tl.full((BLOCK_N, BLOCK_K), 0.0, tl.float32)
        for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs)
                w = tl.load(w_ptrs)
            else:
                k_ok = offs_k < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=k_ok, other=0.0)
                w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
            if HAS_SCALE:
                kk = tl.minimum(k * BLOCK_K + offs_k, K - 1)
                scale = tl.load(s_ptr + expert * stride_se + (kk // SB_K)[None, :] * stride_sk
                                + (cols // SB_N)[:, None] * stride_sn)
                acc += w.to(tl.float32) * scale * a.to(tl.float32)[None, :]
            else:
                acc += w.to(tl.float32) * a.to(tl.float32)[None, :]
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        total += weight * tl.reduce(acc, 1, _ADD)
    tl.store(out_ptr + token * stride_om + offs_n, total.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def _moe_gemv2_pairs_kernel(a_ptr, w_ptr, out_ptr, topk_ids_ptr, topk_weights_ptr, N, K,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                            stride_am, stride_we, stride_wn, stride_om,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """Decode GEMM 2 split over the k experts: one program per (pair, column block), k times the
    programs of _moe_gemv2_kernel, each with one expert's loop; moe_sum adds the k rows after.

    out[p, n] = weight_p · act[p] · w2[e_p, n], accumulated in fp32.
    """
    pair = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    expert = tl.load(topk_ids_ptr + pair).to(tl.int64)
    weight = tl.load(topk_weights_ptr + pair).to(tl.float32)
    a_ptrs = a_ptr + pair * stride_am + offs_k
    w_ptrs = w_ptr + expert * stride_we + cols[:, None] * stride_wn + offs_k[None, :]
    acc = tl.full((BLOCK_N, BLOCK_K), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_ok = offs_k < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok, other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0)
        acc += w.to(tl.float32) * a.to(tl.float32)[None, :]
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    row = weight * tl.reduce(acc, 1, _ADD)
    tl.store(out_ptr + pair * stride_om + offs_n, row.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def _moe_sum_kernel(x_ptr, out_ptr, H, stride_xm, stride_om,  # type: ignore[no-untyped-def]  # Triton reads parameter annotations
                    TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t] = Σ_j x[t·k + j], accumulated in fp32."""
    token = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = offs < H
    acc = tl.full([BLOCK_H], 0.0, tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(x_ptr + (token * TOP_K + j) * stride_xm + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * stride_om + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    """The jitted kernels, built under the mode asked for (one set per mode, built once)."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        # Token-dependent integers (and top-k) are not specialised on: Triton would otherwise compile
        # a variant for each of "== 1", "% 16 == 0" and neither, and one compile should serve every
        # batch size and both DeepSeek layer shapes.
        per_call = ["num_pairs", "num_m_blocks"]
        return SimpleNamespace(
            count=triton.jit(_moe_count_kernel, do_not_specialize=["num_pairs"]),
            align=triton.jit(_moe_align_kernel, do_not_specialize=[*per_call, "num_chunks"]),
            gemm1=triton.jit(_moe_gemm1_kernel, do_not_specialize=[*per_call, "top_k"]),
            gemm2=triton.jit(_moe_gemm2_kernel, do_not_specialize=per_call),
            sum=triton.jit(_moe_sum_kernel),
            gemv1=triton.jit(_moe_gemv1_kernel, do_not_specialize=["top_k"]),
            gemv2=triton.jit(_moe_gemv2_kernel, do_not_specialize=["top_k"]),
            gemv2_pairs=triton.jit(_moe_gemv2_pairs_kernel),
        )
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _use_interpreter(t: torch.Tensor) -> bool:
    if t.is_cuda:
        return False
    check(interpreter_enabled(), f"Triton kernels need CUDA tensors (got device {t.device}) unless "
                                  "TRITON_INTERPRET=1 is set")
    return True


def max_padded_pairs(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the aligned length: each expert that gets a pair pads at most BLOCK_M - 1."""
    return num_pairs + min(num_experts, num_pairs) * (block_m - 1)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *, chunk: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T·k pairs by expert, padded per expert to BLOCK_M, without a host sync.

    Returns sorted_ids [num_m_blocks·BLOCK_M] int32 (pair ids; padding holds T·k), expert_ids
    [num_m_blocks] int32 (-1 past the end) and num_post_pad [1] int32 (the padded length).
    num_m_blocks is a bound known on the host; the GEMMs skip blocks at or past num_post_pad.
    `chunk` (pairs per program, a power of two) is for tests that want the multi-program path.
    """
    check(topk_ids.dim() == 2, f"moe_align: topk_ids must be 2-D [T, k], got shape {tuple(topk_ids.shape)}")
    check(topk_ids.dtype in (torch.int32, torch.int64),
           f"moe_align: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    check_contiguous("moe_align: topk_ids", topk_ids)
    check(block_m >= 16 and block_m & (block_m - 1) == 0,
           f"moe_align: BLOCK_M must be a power of two >= 16, got {block_m}")
    interpret = _use_interpreter(topk_ids)
    num_pairs = topk_ids.numel()
    device = topk_ids.device
    num_m_blocks = triton.cdiv(max_padded_pairs(num_pairs, num_experts, block_m), block_m)
    sorted_ids = torch.empty(num_m_blocks * block_m, dtype=torch.int32, device=device)
    expert_ids = torch.empty(num_m_blocks, dtype=torch.int32, device=device)
    num_post_pad = torch.empty(1, dtype=torch.int32, device=device)

    e_pad = triton.next_power_of_2(num_experts)
    if chunk is None:
        # [CHUNK, E_PAD] tiles: bounded for register pressure, and no wider than the pairs at decode
        chunk = max(16, min(1024, 16384 // e_pad, triton.next_power_of_2(max(num_pairs, 1))))
    num_chunks = triton.cdiv(num_pairs, chunk)
    rows = max(2, min(64, 8192 // e_pad))
    num_warps = 8 if e_pad * chunk >= 8192 else 4
    k = _kernels(interpret)
    if num_chunks == 1:
        chunk_counts = sorted_ids  # unused when SINGLE
    else:
        chunk_counts = torch.empty(num_chunks, e_pad, dtype=torch.int32, device=device)
        k.count[(num_chunks,)](topk_ids, chunk_counts, num_pairs, num_experts,
                               E_PAD=e_pad, CHUNK=chunk, num_warps=num_warps)
    k.align[(num_chunks,)](topk_ids, chunk_counts, sorted_ids, expert_ids, num_post_pad,
                           num_pairs, num_experts, num_chunks, num_m_blocks,
                           BLOCK_M=block_m, E_PAD=e_pad, CHUNK=chunk, ROWS=rows,
                           SINGLE=num_chunks == 1, num_warps=num_warps)
    return sorted_ids, expert_ids, num_post_pad


@functools.lru_cache(maxsize=16)
def _device_name(index: int | None) -> str:
    return torch.cuda.get_device_name(index)  # a driver query: kept off the per-call path


@functools.lru_cache(maxsize=16)
def _max_shared_memory(index: int | None) -> int:
    """Shared memory a block may use on this device (Triton's own query; a default if it fails)."""
    try:
        device = torch.cuda.current_device() if index is None else index
        return int(triton.runtime.driver.active.utils.get_device_properties(device)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - an older Triton without the query: assume Hopper
        return DEFAULT_SHARED_MEMORY


def _check_tiles(cfg: Config, where: str) -> None:
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        check(cfg[key] >= 16 and cfg[key] & (cfg[key] - 1) == 0,
              f"{where}: {key} must be a power of two >= 16 (tl.dot needs it), got {cfg[key]}")


SCALE_BLOCK = 128  # DeepSeek's FP8 block (weight_block_size [128, 128])


def _scale_args(w: torch.Tensor, scale: torch.Tensor | None) -> tuple[tuple[object, int, int, int], dict[str, object]]:
    """The (pointer, strides) and constexprs of a weight's block scales; w stands in when there are none."""
    if scale is None:
        return (w, 0, 0, 0), {"HAS_SCALE": False, "SB_N": SCALE_BLOCK, "SB_K": SCALE_BLOCK}
    return ((scale, scale.stride(0), scale.stride(1), scale.stride(2)),
            {"HAS_SCALE": True, "SB_N": SCALE_BLOCK, "SB_K": SCALE_BLOCK})


def moe_gemm1(hidden: torch.Tensor, w13: torch.Tensor, sorted_ids: torch.Tensor, expert_ids: torch.Tensor,
              num_post_pad: torch.Tensor, top_k: int, cfg: Config, w13_scale: torch.Tensor | None = None) -> torch.Tensor:
    """GEMM 1 over the aligned pairs: silu(x·gateᵀ)·(x·upᵀ) → [P, I], row p for pair p."""
    _check_tiles(cfg, "moe_gemm1")
    num_tokens, hidden_size = hidden.shape
    inter = w13.shape[1] // 2
    num_pairs = num_tokens * top_k
    num_m_blocks = expert_ids.numel()
    check(sorted_ids.numel() == num_m_blocks * cfg["BLOCK_M"],
          f"moe_gemm1: sorted_ids has {sorted_ids.numel()} slots, expected {num_m_blocks} blocks of "
          f"BLOCK_M = {cfg['BLOCK_M']} (align and GEMM must share BLOCK_M)")
    act = torch.empty(num_pairs, inter, dtype=hidden.dtype, device=hidden.device)
    grid = (num_m_blocks * triton.cdiv(inter, cfg["BLOCK_N"]),)
    scale_args, scale_consts = _scale_args(w13, w13_scale)
    _kernels(_use_interpreter(hidden)).gemm1[grid](
        hidden, w13, act, sorted_ids, expert_ids, num_post_pad,
        num_pairs, top_k, inter, hidden_size, num_m_blocks,
        hidden.stride(0), hidden.stride(1), w13.stride(0), w13.stride(1), w13.stride(2),
        act.stride(0), act.stride(1), *scale_args,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], EVEN_K=hidden_size % cfg["BLOCK_K"] == 0, **scale_consts,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return act


def moe_gemm2(act: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, sorted_ids: torch.Tensor,
              expert_ids: torch.Tensor, num_post_pad: torch.Tensor, cfg: Config,
              out: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """GEMM 2 over the aligned pairs: weight_p · act_p·w2[e]ᵀ → [P, H] (into `out` if given)."""
    _check_tiles(cfg, "moe_gemm2")
    num_pairs, inter = act.shape
    hidden_size = w2.shape[1]
    num_m_blocks = expert_ids.numel()
    check(topk_weights.numel() == num_pairs,
          f"moe_gemm2: {topk_weights.numel()} routing weights for {num_pairs} pairs")
    if out is None:
        out = torch.empty(num_pairs, hidden_size, dtype=act.dtype, device=act.device)
    check(tuple(out.shape) == (num_pairs, hidden_size),
          f"moe_gemm2: out must be [P, H] = {(num_pairs, hidden_size)}, got {tuple(out.shape)}")
    grid = (num_m_blocks * triton.cdiv(hidden_size, cfg["BLOCK_N"]),)
    scale_args, scale_consts = _scale_args(w2, w2_scale)
    _kernels(_use_interpreter(act)).gemm2[grid](
        act, w2, out, topk_weights, sorted_ids, expert_ids, num_post_pad,
        num_pairs, hidden_size, inter, num_m_blocks,
        act.stride(0), act.stride(1), w2.stride(0), w2.stride(1), w2.stride(2),
        out.stride(0), out.stride(1), *scale_args,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], EVEN_K=inter % cfg["BLOCK_K"] == 0, **scale_consts,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def moe_sum(per_pair: torch.Tensor, top_k: int, out: torch.Tensor) -> torch.Tensor:
    """out[t] = Σ_j per_pair[t·k + j], accumulated in fp32."""
    num_tokens, hidden_size = out.shape
    check(tuple(per_pair.shape) == (num_tokens * top_k, hidden_size),
          f"moe_sum: per_pair must be [T·k, H] = {(num_tokens * top_k, hidden_size)}, got {tuple(per_pair.shape)}")
    block_h = min(1024, triton.next_power_of_2(hidden_size))
    _kernels(_use_interpreter(out)).sum[(num_tokens, triton.cdiv(hidden_size, block_h))](
        per_pair, out, hidden_size, per_pair.stride(0), out.stride(0),
        TOP_K=top_k, BLOCK_H=block_h, num_warps=4,
    )
    return out


DECODE_MAX_TOKENS = 2  # measured on an H200: wins at 1-2 tokens, even at 4, loses at 8 (docs/benchmarks.md)


def use_decode_path(num_tokens: int, top_k: int, num_experts: int) -> bool:
    """The GEMV path reads an expert once per pair that picks it, so it only pays where pairs rarely
    share an expert: a single token (its k experts are distinct) or a few. The cut-off is
    DECODE_MAX_TOKENS, or $LEVEE_MOE_DECODE_MAX_TOKENS where set (for measuring)."""
    limit = os.environ.get("LEVEE_MOE_DECODE_MAX_TOKENS")
    return num_tokens <= (int(limit) if limit else DECODE_MAX_TOKENS)


def _gemv_tiles(n: int, k: int, programs_wanted: int, rows: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) for the GEMV kernels.

    Decode is a race to keep enough bytes in flight (about latency × bandwidth, a few MB on an
    H200), with no pipelining across iterations to lean on: so wide K tiles (up to 1024, long
    contiguous rows) and few rows per program, halving BLOCK_N until there are `programs_wanted`.
    """
    block_k = min(1024, triton.next_power_of_2(k))
    block_n = max(2, 4096 // block_k)
    while block_n > 2 and rows * triton.cdiv(n, block_n) < programs_wanted:
        block_n //= 2
    return block_n, block_k


@functools.lru_cache(maxsize=16)
def _num_sms(index: int | None) -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).multi_processor_count


def moe_gemv1(hidden: torch.Tensor, w13: torch.Tensor, topk_ids: torch.Tensor,
              tiles: tuple[int, int, int] | None = None, w13_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Decode GEMM 1 per pair, no align: silu(x·gateᵀ)·(x·upᵀ) → [P, I]. tiles: (BLOCK_N, BLOCK_K, warps)."""
    num_tokens, hidden_size = hidden.shape
    inter = w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if tiles is None:
        wanted = 4 * (_num_sms(hidden.device.index) if hidden.is_cuda else 4)
        tiles = (*_gemv_tiles(inter, hidden_size, wanted, num_pairs), 4)
    block_n, block_k, warps = tiles
    act = torch.empty(num_pairs, inter, dtype=hidden.dtype, device=hidden.device)
    scale_args, scale_consts = _scale_args(w13, w13_scale)
    _kernels(_use_interpreter(hidden)).gemv1[(num_pairs, triton.cdiv(inter, block_n))](
        hidden, w13, act, topk_ids, inter, hidden_size, top_k,
        hidden.stride(0), w13.stride(0), w13.stride(1), act.stride(0), *scale_args,
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=hidden_size % block_k == 0, num_warps=warps, **scale_consts,
    )
    return act


def moe_gemv2(act: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
              out: torch.Tensor, tiles: tuple[int, int, int] | None = None,
              w2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Decode GEMM 2 with the sum over k: out[t] = Σ_j w_j · act[t·k+j]·w2[e_j]ᵀ. tiles as moe_gemv1."""
    num_tokens, hidden_size = out.shape
    inter = act.shape[1]
    top_k = topk_ids.shape[1]
    if tiles is None:
        wanted = 4 * (_num_sms(out.device.index) if out.is_cuda else 4)
        tiles = (*_gemv_tiles(hidden_size, inter, wanted, num_tokens), 4)
    block_n, block_k, warps = tiles
    scale_args, scale_consts = _scale_args(w2, w2_scale)
    _kernels(_use_interpreter(out)).gemv2[(num_tokens, triton.cdiv(hidden_size, block_n))](
        act, w2, out, topk_ids, topk_weights, hidden_size, inter, top_k,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0), *scale_args,
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=inter % block_k == 0, num_warps=warps, **scale_consts,
    )
    return out


def moe_gemv2_split(act: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    out: torch.Tensor, tiles: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Decode GEMM 2 split over the k experts: weighted rows per pair (fp32), then moe_sum. k times
    the programs of moe_gemv2, one launch more (none when k = 1: rows go straight to `out`)."""
    num_tokens, hidden_size = out.shape
    num_pairs, inter = act.shape
    top_k = topk_ids.shape[1]
    if tiles is None:
        wanted = 4 * (_num_sms(out.device.index) if out.is_cuda else 4)
        tiles = (*_gemv_tiles(hidden_size, inter, wanted, num_pairs), 4)
    block_n, block_k, warps = tiles
    per_pair = out if top_k == 1 else torch.empty(num_pairs, hidden_size, dtype=torch.float32, device=out.device)
    _kernels(_use_interpreter(out)).gemv2_pairs[(num_pairs, triton.cdiv(hidden_size, block_n))](
        act, w2, per_pair, topk_ids, topk_weights, hidden_size, inter,
        act.stride(0), w2.stride(0), w2.stride(1), per_pair.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=inter % block_k == 0, num_warps=warps,
    )
    return out if top_k == 1 else moe_sum(per_pair, top_k, out)


def moe_decode(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
               topk_ids: torch.Tensor, out: torch.Tensor, config: Config | None = None,
               w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Small-batch path: no align, no tensor cores; GEMM 2 also sums over k. Two launches.

    Tiles come from the config's "gemv1"/"gemv2" entries ([BLOCK_N, BLOCK_K, num_warps]) where the
    tuned table has them, else from `_gemv_tiles`. A "gemv2_split" entry (true, or its own tiles)
    switches GEMM 2 to `moe_gemv2_split` (k times the programs, plus a sum launch): off unless a
    config asks, since no GPU has measured it yet (`ops/bench/moe.py --breakdown-tokens` times both).
    """
    config = config or {}
    tiles1 = tuple(config["gemv1"]) if "gemv1" in config else None
    tiles2 = tuple(config["gemv2"]) if "gemv2" in config else None
    act = moe_gemv1(hidden, w13, topk_ids, tiles1, w13_scale)  # [P, I]
    split = config.get("gemv2_split")
    if w2_scale is not None:  # the split GEMV has no FP8 variant
        return moe_gemv2(act, w2, topk_ids, topk_weights, out, tiles2, w2_scale)
    if split:
        return moe_gemv2_split(act, w2, topk_ids, topk_weights, out, tuple(split) if split is not True else None)
    return moe_gemv2(act, w2, topk_ids, topk_weights, out, tiles2)


def fused_moe_triton(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
                     config: Config | None = None, decode: bool | None = None,
                     w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
                     foreign: bool = False) -> torch.Tensor:
    """The routed MoE output [T, H] through the Triton kernels (CUDA, or CPU under the interpreter).

    `decode` forces (True) or refuses (False) the small-batch path (`moe_decode`: no align, GEMV
    kernels, the sum over k fused); None lets `use_decode_path` decide.
    FP8: w13/w2 float8_e4m3fn with 128×128 block scales w13_scale/w2_scale (kernels/fp8.py), scaled
    inside every GEMM. `foreign`: ids equal to E mark pairs of experts on other ranks; align skips
    them, their rows stay zero, and the decode path (which reads every pair's expert) is not used.
    """
    check_moe_inputs(hidden, w13, w2, topk_weights, topk_ids, where="fused_moe_triton",
                     w13_scale=w13_scale, w2_scale=w2_scale, foreign=foreign)
    interpret = _use_interpreter(hidden)
    check(not (interpret and hidden.dtype == torch.bfloat16),
          "fused_moe_triton: the Triton interpreter computes garbage for bfloat16; use float16/float32 "
          "on the CPU, or the torch path")
    num_tokens, hidden_size = hidden.shape
    num_experts, two_inter, _ = w13.shape
    top_k = topk_ids.shape[1]
    out = torch.zeros_like(hidden) if foreign else torch.empty_like(hidden)
    if num_tokens == 0:
        return out
    if config is None:
        device_name = _device_name(hidden.device.index) if hidden.is_cuda else None
        config = get_config(num_tokens, num_experts, two_inter // 2, top_k, device_name, interpret)
    if foreign:
        decode = False
    if decode if decode is not None else use_decode_path(num_tokens, top_k, num_experts):
        return moe_decode(hidden, w13, w2, topk_weights, topk_ids, out, config, w13_scale, w2_scale)
    cfg1, cfg2 = gemm_configs(config)
    if not interpret:
        limit = _max_shared_memory(hidden.device.index)
        cfg1 = fit_shared_memory(cfg1, hidden.element_size(), b_tiles=2, limit=limit)
        cfg2 = fit_shared_memory(cfg2, hidden.element_size(), b_tiles=1, limit=limit)
    _check_tiles(cfg1, "fused_moe_triton")
    _check_tiles(cfg2, "fused_moe_triton")

    sorted_ids, expert_ids, num_post_pad = moe_align(topk_ids, num_experts, cfg1["BLOCK_M"])
    act = moe_gemm1(hidden, w13, sorted_ids, expert_ids, num_post_pad, top_k, cfg1, w13_scale)  # [P, I]
    if top_k == 1:  # one pair per token: GEMM 2 writes the output itself
        return moe_gemm2(act, w2, topk_weights, sorted_ids, expert_ids, num_post_pad, cfg2, out=out,
                         w2_scale=w2_scale)
    per_pair = torch.zeros(num_tokens * top_k, hidden_size, dtype=hidden.dtype, device=hidden.device) if foreign \
        else None
    per_pair = moe_gemm2(act, w2, topk_weights, sorted_ids, expert_ids, num_post_pad, cfg2, out=per_pair,
                         w2_scale=w2_scale)  # [P, H]
    return moe_sum(per_pair, top_k, out)
