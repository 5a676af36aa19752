"""The one place the model calls the routed experts of a MoE layer.

`routed_experts` has exactly the signature of `kernels.fused_moe`; the model never reaches the
experts any other way, so switching implementations is a change to this file alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def routed_experts(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]  rows [0:I] gate, [I:2I] up
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
) -> torch.Tensor:  # [T, H]
    """Σ_k weight_k · down(silu(gate(x)) · up(x)) over each token's k chosen experts (no shared experts).

    TODO(merge): switch to `kernels.fused_moe` (Triton on CUDA, its torch reference on CPU) when the
    kernels branch lands; this plain loop is the stand-in until then.
    """
    T, H = hidden.shape
    E, two_i, _ = w13.shape
    inter = two_i // 2
    k = topk_ids.shape[1]
    out = torch.zeros(T, H, dtype=torch.float32, device=hidden.device)
    if T == 0:
        return out.to(hidden.dtype)
    flat_ids = topk_ids.reshape(-1)  # [T·k]
    order = torch.argsort(flat_ids, stable=True)  # (token, slot) pairs grouped by expert
    token_of_pair = order // k  # [T·k]
    weight_of_pair = topk_weights.reshape(-1)[order].to(torch.float32)
    # One host sync per layer to size each expert's slice. It costs nothing on a CPU (there is no
    # queue to drain) and the fused kernel that replaces this loop on CUDA has none.
    counts = torch.bincount(flat_ids, minlength=E).tolist()
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = token_of_pair[start : start + n]
        x = hidden.index_select(0, rows)  # [n, H]
        gate_up = F.linear(x, w13[e])  # [n, 2I]
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = F.linear(act, w2[e]).to(torch.float32)  # [n, H]
        out.index_add_(0, rows, y * weight_of_pair[start : start + n, None])
        start += n
    return out.to(hidden.dtype)
