"""Fused Mixture-of-Experts kernels: tensors in, tensors out; nothing here knows of models.

    from kernels import fused_moe
    out = fused_moe(hidden, w13, w2, topk_weights, topk_ids)   # [T, H]

Importing this package never imports triton: CPU-only workers without it get the torch path.
"""

from kernels.checks import MoEInputError, check_moe_inputs
from kernels.moe import backend_for, fused_moe, triton_available
from kernels.reference import moe_reference
from kernels.torch_moe import moe_torch

__all__ = [
    "MoEInputError",
    "backend_for",
    "check_moe_inputs",
    "fused_moe",
    "moe_reference",
    "moe_torch",
    "triton_available",
]
