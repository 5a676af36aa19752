"""Input checks shared by every backend: one message per mistake, naming what was wrong."""

from __future__ import annotations

import torch


class MoEInputError(ValueError):
    """A launcher was given tensors of the wrong shape, dtype, device or layout."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise MoEInputError(message)


def check_contiguous(name: str, t: torch.Tensor) -> None:
    check(t.is_contiguous(), f"{name} must be contiguous (got strides {tuple(t.stride())} for shape "
                              f"{tuple(t.shape)}); call .contiguous() first")


def check_moe_inputs(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor, where: str = "fused_moe") -> None:
    """Shapes, dtypes, devices and layout of a fused_moe call; a message names what is wrong."""
    check(hidden.dim() == 2, f"{where}: hidden must be 2-D [T, H], got shape {tuple(hidden.shape)}")
    check(w13.dim() == 3, f"{where}: w13 must be 3-D [E, 2I, H], got shape {tuple(w13.shape)}")
    check(w2.dim() == 3, f"{where}: w2 must be 3-D [E, H, I], got shape {tuple(w2.shape)}")
    check(topk_ids.dim() == 2, f"{where}: topk_ids must be 2-D [T, k], got shape {tuple(topk_ids.shape)}")
    num_tokens, hidden_size = hidden.shape
    num_experts, two_inter, _ = w13.shape
    check(w13.shape[2] == hidden_size,
           f"{where}: w13 {tuple(w13.shape)} must be [E, 2I, H] with H = {hidden_size} (hidden's last dim)")
    check(two_inter % 2 == 0, f"{where}: w13's second dim (2I) must be even, got {two_inter}")
    inter = two_inter // 2
    check(tuple(w2.shape) == (num_experts, hidden_size, inter),
           f"{where}: w2 must be [E, H, I] = {(num_experts, hidden_size, inter)} to match w13 "
           f"{tuple(w13.shape)} and hidden {tuple(hidden.shape)}, got {tuple(w2.shape)}")
    check(topk_ids.shape[0] == num_tokens,
           f"{where}: topk_ids has {topk_ids.shape[0]} rows but hidden has {num_tokens} tokens")
    check(topk_weights.shape == topk_ids.shape,
           f"{where}: topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(topk_ids.shape)} "
           "must have the same shape [T, k]")
    check(topk_ids.shape[1] <= num_experts,
           f"{where}: top-k = {topk_ids.shape[1]} exceeds the number of experts E = {num_experts}")
    check(hidden.dtype in (torch.float16, torch.bfloat16, torch.float32),
           f"{where}: hidden must be float16, bfloat16 or float32, got {hidden.dtype}")
    check(w13.dtype == hidden.dtype and w2.dtype == hidden.dtype,
           f"{where}: w13 ({w13.dtype}) and w2 ({w2.dtype}) must have hidden's dtype ({hidden.dtype})")
    check(topk_weights.is_floating_point(),
           f"{where}: topk_weights must be floating point, got {topk_weights.dtype}")
    check(topk_ids.dtype in (torch.int32, torch.int64),
           f"{where}: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    devices = {t.device for t in (hidden, w13, w2, topk_weights, topk_ids)}
    check(len(devices) == 1, f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")
    for name, t in (("hidden", hidden), ("w13", w13), ("w2", w2),
                    ("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        check_contiguous(f"{where}: {name}", t)
