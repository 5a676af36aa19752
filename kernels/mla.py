"""The one entry point the engine uses for paged MLA decode attention: `mla_decode`.

Dispatch as for `fused_moe` (kernels/moe.py): CUDA tensors go to the Triton kernel; CPU tensors go
to the torch split form, or to the Triton kernel under TRITON_INTERPRET=1 (tests). Both compute the
same fixed KV splits (kernels/torch_mla.py), so a sequence's result never depends on its batch mates.
"""

from __future__ import annotations

import torch

from kernels.moe import _interpreter_requested, triton_available
from kernels.torch_mla import KV_SPLIT, decode_plan, mla_decode_torch


def mla_backend_for(q: torch.Tensor) -> str:
    """'triton' or 'torch': which implementation mla_decode runs for a tensor on this device."""
    wants_triton = q.is_cuda or (q.device.type == "cpu" and _interpreter_requested())
    return "triton" if wants_triton and triton_available() else "torch"


def mla_decode(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, *,
               scale: float, block_size: int, latent_rank: int, max_splits: int | None = None,
               plan: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Absorbed queries [B, nH, C + R] over the paged latent cache [slots, C + R] → [B, nH, C].

    block_table [B, nb] (a multiple of KV_SPLIT / block_size blocks per row for the torch form) and
    lengths [B] live on q's device; see kernels/torch_mla.py for the layout. `plan`: the torch form's
    `decode_plan`, kept by a caller across layers (the Triton kernel reads the tables itself)."""
    if mla_backend_for(q) == "triton":
        from kernels.triton_mla import mla_decode_triton

        return mla_decode_triton(q, cache, block_table, lengths, scale=scale, block_size=block_size,
                                 latent_rank=latent_rank, max_splits=max_splits)
    return mla_decode_torch(q, cache, block_table, lengths, scale=scale, block_size=block_size,
                            latent_rank=latent_rank, plan=plan)


__all__ = ["KV_SPLIT", "decode_plan", "mla_backend_for", "mla_decode"]
