"""The one entry point the model uses: `fused_moe`, which picks a backend per call.

Dispatch rule: CUDA tensors go to the Triton kernels; CPU tensors go to the torch fast path,
except that with TRITON_INTERPRET=1 set they go to the Triton kernels too (run by the interpreter,
for tests). Without triton installed (CPU-only workers) everything goes to the torch path.
"""

from __future__ import annotations

import functools
import os

import torch

from kernels.checks import check_moe_inputs
from kernels.fp8 import CACHE
from kernels.torch_moe import moe_torch


@functools.cache
def triton_available() -> bool:
    """Whether the Triton kernels can load here (imports triton on first call, not before)."""
    try:
        import kernels.triton_moe  # noqa: F401
    except ImportError:  # a triton that cannot load (no driver libraries, wrong version) counts as absent
        return False
    return True


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def backend_for(hidden: torch.Tensor) -> str:
    """'triton' or 'torch': which implementation fused_moe runs for a tensor on this device."""
    wants_triton = hidden.is_cuda or (hidden.device.type == "cpu" and _interpreter_requested())
    return "triton" if wants_triton and triton_available() else "torch"


def fused_moe(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]; rows [0:I] gate, [I:2I] up
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
    *,
    w13_scale: torch.Tensor | None = None,  # [E, 2⌈I/128⌉, ⌈H/128⌉] fp32: FP8 weights
    w2_scale: torch.Tensor | None = None,  # [E, ⌈H/128⌉, ⌈I/128⌉] fp32
    expert_map: torch.Tensor | None = None,  # [E_global] int: local index, or -1 on another rank
) -> torch.Tensor:  # [T, H]
    """The routed experts' contribution Σ_k weight_k · down(silu(gate(x)) · up(x)); shared experts
    stay in the model.

    FP8 (W8A16): w13/w2 are float8_e4m3fn with 128×128 block scales (w13's are the gate's grid then
    the up's); the Triton kernels scale the weights as they load them, the torch path dequantizes
    the experts the call uses (kernels/fp8.py's cache). Expert parallelism: with `expert_map`,
    topk_ids are global expert ids and w13/w2 hold this rank's experts only; pairs routed to
    other ranks' experts contribute zero here (the caller all-reduces across ranks)."""
    num_local = w13.shape[0]
    if expert_map is not None:
        local = expert_map.to(topk_ids.device)[topk_ids.long()]
        topk_ids = torch.where(local < 0, torch.full_like(local, num_local), local).to(topk_ids.dtype).contiguous()
    if backend_for(hidden) == "triton":
        from kernels.triton_moe import fused_moe_triton

        return fused_moe_triton(hidden, w13, w2, topk_weights, topk_ids, w13_scale=w13_scale, w2_scale=w2_scale,
                                foreign=expert_map is not None)
    check_moe_inputs(hidden, w13, w2, topk_weights, topk_ids, w13_scale=w13_scale, w2_scale=w2_scale,
                     foreign=expert_map is not None)
    if w13_scale is None or w2_scale is None:
        return moe_torch(hidden, w13, w2, topk_weights, topk_ids)
    s13, s2, dtype = w13_scale, w2_scale, hidden.dtype

    def expert_weights(e: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (CACHE.get(w13, s13, dtype, e, stacked_halves=True), CACHE.get(w2, s2, dtype, e))

    return moe_torch(hidden, w13, w2, topk_weights, topk_ids, expert_weights=expert_weights)
