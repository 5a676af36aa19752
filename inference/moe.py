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
    if T == 0:
        return hidden.new_zeros(T, H)
    flat_ids = topk_ids.reshape(-1)  # [T·k] one (token, slot) pair per entry
    order = torch.argsort(flat_ids, stable=True)  # pairs grouped by expert
    x = hidden.index_select(0, order // k)  # [T·k, H] the token of each pair, expert-major
    # One host sync per layer to size each expert's slice. It costs nothing on a CPU (there is no
    # queue to drain) and the fused kernel that replaces this loop on CUDA has none.
    counts = torch.bincount(flat_ids, minlength=E).tolist()
    y = torch.empty_like(x)  # [T·k, H]
    start = 0
    for e, n in enumerate(counts):
        if n:
            gate_up = F.linear(x[start : start + n], w13[e])  # [n, 2I]
            y[start : start + n] = F.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:], w2[e])
            start += n
    per_pair = torch.empty_like(y)
    per_pair[order] = y  # back to (token, slot) order
    # Σ over the k slots in a fixed order, in fp32: a token's sum never depends on its neighbours.
    out = (per_pair.view(T, k, H).float() * topk_weights.float()[..., None]).sum(dim=1)
    return out.to(hidden.dtype)
