"""Input checks shared by every backend: one message per mistake, naming what was wrong."""

from __future__ import annotations

from collections.abc import Callable

import torch


class MoEInputError(ValueError):
    """A launcher was given tensors of the wrong shape, dtype, device or layout."""


def check(condition: bool, message: str | Callable[[], str]) -> None:
    """Raise MoEInputError(message) unless condition; a callable message is only formatted then (the
    checks run on every call of a decode step, where formatting shapes into strings is host time)."""
    if not condition:
        raise MoEInputError(message if isinstance(message, str) else message())


def check_contiguous(name: str, t: torch.Tensor) -> None:
    check(t.is_contiguous(), lambda: f"{name} must be contiguous (got strides {tuple(t.stride())} for shape "
                              f"{tuple(t.shape)}); call .contiguous() first")


def check_moe_inputs(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, where: str = "fused_moe",
                     w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
                     foreign: bool = False) -> None:
    """Shapes, dtypes, devices and layout of a fused_moe call; a message names what is wrong.
    With block scales the weights are float8_e4m3fn and the scales float32 block grids."""
    check(hidden.dim() == 2, lambda: f"{where}: hidden must be 2-D [T, H], got shape {tuple(hidden.shape)}")
    check(w13.dim() == 3, lambda: f"{where}: w13 must be 3-D [E, 2I, H], got shape {tuple(w13.shape)}")
    check(w2.dim() == 3, lambda: f"{where}: w2 must be 3-D [E, H, I], got shape {tuple(w2.shape)}")
    check(topk_ids.dim() == 2, lambda: f"{where}: topk_ids must be 2-D [T, k], got shape {tuple(topk_ids.shape)}")
    num_tokens, hidden_size = hidden.shape
    num_experts, two_inter, _ = w13.shape
    check(w13.shape[2] == hidden_size,
           lambda: f"{where}: w13 {tuple(w13.shape)} must be [E, 2I, H] with H = {hidden_size} (hidden's last dim)")
    check(two_inter % 2 == 0, lambda: f"{where}: w13's second dim (2I) must be even, got {two_inter}")
    inter = two_inter // 2
    check(tuple(w2.shape) == (num_experts, hidden_size, inter),
           lambda: f"{where}: w2 must be [E, H, I] = {(num_experts, hidden_size, inter)} to match w13 "
           f"{tuple(w13.shape)} and hidden {tuple(hidden.shape)}, got {tuple(w2.shape)}")
    check(topk_ids.shape[0] == num_tokens,
           lambda: f"{where}: topk_ids has {topk_ids.shape[0]} rows but hidden has {num_tokens} tokens")
    check(topk_weights.shape == topk_ids.shape,
           lambda: f"{where}: topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} "
           "must have the same shape [T, k]")
    check(foreign or topk_ids.shape[1] <= num_experts,
           lambda: f"{where}: top-k = {topk_ids.shape[1]} exceeds the number of experts E = {num_experts}")
    check(hidden.dtype in (torch.float16, torch.bfloat16, torch.float32),
           lambda: f"{where}: hidden must be float16, bfloat16 or float32, got {hidden.dtype}")
    if w13_scale is None and w2_scale is None:
        check(w13.dtype == hidden.dtype and w2.dtype == hidden.dtype,
              lambda: f"{where}: w13 ({w13.dtype}) and w2 ({w2.dtype}) must have hidden's dtype ({hidden.dtype})")
    else:
        from kernels.fp8 import FP8_DTYPE, scale_shape, w13_scale_shape

        check(w13_scale is not None and w2_scale is not None,
              lambda: f"{where}: FP8 weights need both w13_scale and w2_scale")
        assert w13_scale is not None and w2_scale is not None
        check(w13.dtype == FP8_DTYPE and w2.dtype == FP8_DTYPE,
              lambda: f"{where}: with block scales w13 ({w13.dtype}) and w2 ({w2.dtype}) must be float8_e4m3fn")
        want13 = (num_experts, *w13_scale_shape(inter, hidden_size))
        want2 = (num_experts, *scale_shape(hidden_size, inter))
        check(tuple(w13_scale.shape) == want13,
              lambda: f"{where}: w13_scale must be [E, 2*ceil(I/128), ceil(H/128)] = {want13}, got {tuple(w13_scale.shape)}")
        check(tuple(w2_scale.shape) == want2,
              lambda: f"{where}: w2_scale must be [E, ceil(H/128), ceil(I/128)] = {want2}, got {tuple(w2_scale.shape)}")
        check(w13_scale.dtype == torch.float32 and w2_scale.dtype == torch.float32,
              lambda: f"{where}: block scales must be float32, got {w13_scale.dtype} and {w2_scale.dtype}")
        check_contiguous(f"{where}: w13_scale", w13_scale)
        check_contiguous(f"{where}: w2_scale", w2_scale)
    check(topk_weights.is_floating_point(),
           lambda: f"{where}: topk_weights must be floating point, got {topk_weights.dtype}")
    check(topk_ids.dtype in (torch.int32, torch.int64),
           lambda: f"{where}: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    devices = {t.device for t in (hidden, w13, w2, topk_weights, topk_ids)}
    check(len(devices) == 1, lambda: f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")
    for name, t in (("hidden", hidden), ("w13", w13), ("w2", w2),
                    ("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        check_contiguous(f"{where}: {name}", t)
