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
) -> torch.Tensor:  # [T, H]
    """The routed experts' contribution Σ_k weight_k · down(silu(gate(x)) · up(x)); shared experts
    stay in the model."""
    if backend_for(hidden) == "triton":
        from kernels.triton_moe import fused_moe_triton

        return fused_moe_triton(hidden, w13, w2, topk_weights, topk_ids)
    check_moe_inputs(hidden, w13, w2, topk_weights, topk_ids)
    return moe_torch(hidden, w13, w2, topk_weights, topk_ids)
