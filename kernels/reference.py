"""The oracle: a routed MoE layer as a plain loop over experts.

Every expert runs on every token and a token's weight for an expert is zero unless the router
picked it. That wastes work on purpose: there is no gather, no sort and no padding to get wrong,
so it is the thing every faster path is checked against.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_reference(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]; rows [0:I] gate, [I:2I] up
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
    *,
    compute_dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:  # [T, H], hidden's dtype
    """Σ_k weight_k · down(silu(gate(x)) · up(x)), computed in `compute_dtype` (None: the inputs')."""
    dtype = compute_dtype or hidden.dtype
    x = hidden.to(dtype)
    num_experts = w13.shape[0]
    inter = w13.shape[1] // 2
    out = torch.zeros_like(x)
    for e in range(num_experts):
        # [T]: the weight this token gives expert e (0 when e is not among its top-k)
        weight = (topk_weights.to(dtype) * (topk_ids == e).to(dtype)).sum(dim=-1)
        gate_up = x @ w13[e].to(dtype).t()  # [T, 2I]
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [T, I]
        out += weight[:, None] * (act @ w2[e].to(dtype).t())  # [T, H]
    return out.to(hidden.dtype)
