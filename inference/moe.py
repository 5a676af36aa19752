"""The one place the model calls the routed experts of a MoE layer.

`routed_experts` has exactly the signature of `kernels.fused_moe`; the model never reaches the
experts any other way. `kernels.fused_moe` runs the fused Triton kernels on CUDA tensors and its
torch fast path on CPU tensors (or the Triton kernels in the interpreter under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

from kernels import fused_moe


def routed_experts(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]  rows [0:I] gate, [I:2I] up
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k] global expert ids
    *,
    w13_scale: torch.Tensor | None = None,  # FP8 block scales (kernels/fp8.py), or None
    w2_scale: torch.Tensor | None = None,
    expert_map: torch.Tensor | None = None,  # [E] global → local expert, -1 on other ranks
) -> torch.Tensor:  # [T, H]
    """Σ_k weight_k · down(silu(gate(x)) · up(x)) over each token's k chosen experts (no shared experts);
    under expert parallelism only the pairs of this rank's experts (the caller all-reduces)."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(hidden.shape)
    return fused_moe(hidden.contiguous(), w13, w2, topk_weights.contiguous(), topk_ids.contiguous(),
                     w13_scale=w13_scale, w2_scale=w2_scale, expert_map=expert_map)
