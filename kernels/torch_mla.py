"""Paged MLA decode attention in torch: the plain reference and the split form the engine runs on CPU.

Legend: B decoding sequences, nH heads, C latent width (kv_lora_rank), R rotary width
(qk_rope_head_dim), D = C + R the cached row, bs tokens per cache block, P = KV_SPLIT tokens per
split, nb blocks in a block table row.

Both take the *absorbed* query: q[b, h] = (q_nope[b, h] · W_UK[h]) ‖ q_pe[b, h], of width D, and
return the latent output o[b, h] = Σ_s softmax_s(scale · q·cache[s]) · cache[s, :C], of width C;
the caller multiplies by W_UV. The cache is one [slots, D] tensor; slot = block · bs + offset; a
sequence's block table row lists its blocks in order and its length says how many tokens count.

The split form cuts every sequence's context into fixed splits of P tokens, attends within each
split (its max, its sum and its weighted latent) and combines the splits in order. A split's work has
the same shape whoever else is in the batch, so a sequence's result does not depend on its batch
mates; the Triton kernel does the same splits (kernels/triton_mla.py).
"""

from __future__ import annotations

import torch

KV_SPLIT = 64  # tokens per split: a multiple of every block size (block sizes divide 64)


def check_decode_inputs(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor,
                        block_size: int, latent_rank: int) -> None:
    B, _, D = q.shape
    if cache.dim() != 2 or cache.shape[1] != D:
        raise ValueError(f"cache must be [slots, {D}], got {tuple(cache.shape)}")
    if not 0 < latent_rank < D:
        raise ValueError(f"latent_rank {latent_rank} must be in (0, {D})")
    if block_table.dim() != 2 or block_table.shape[0] != B or lengths.shape != (B,):
        raise ValueError(f"block_table must be [{B}, nb] and lengths [{B}], got {tuple(block_table.shape)} "
                         f"and {tuple(lengths.shape)}")
    if KV_SPLIT % block_size:
        raise ValueError(f"block_size {block_size} must divide KV_SPLIT {KV_SPLIT}")


def mla_decode_reference(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, *,
                         scale: float, block_size: int, latent_rank: int) -> torch.Tensor:
    """One sequence at a time, dense gather, plain softmax in fp32: [B, nH, D] → [B, nH, C] fp32."""
    out = []
    for b in range(q.shape[0]):
        n = int(lengths[b])
        pos = torch.arange(n, device=q.device)
        slots = block_table[b, pos // block_size].long() * block_size + pos % block_size
        ctx = cache[slots].float()  # [S, D]
        probs = (q[b].float() @ ctx.T * scale).softmax(-1)  # [nH, S]
        out.append(probs @ ctx[:, :latent_rank])
    return torch.stack(out)


def decode_plan(block_table: torch.Tensor, lengths: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What mla_decode_torch derives from the block tables alone, once per step rather than per layer:
    the cache slot of every padded context position [B·n_split, P] and which are past the length
    [B·n_split, 1, P]."""
    B, nb = block_table.shape
    per_split = KV_SPLIT // block_size
    if nb % per_split:
        raise ValueError(f"block_table rows hold {nb} blocks, not a multiple of {per_split}")
    n_split = nb // per_split
    offs = torch.arange(block_size, device=block_table.device)
    slots = (block_table.long()[:, :, None] * block_size + offs).view(B * n_split, KV_SPLIT)
    pos = torch.arange(nb * block_size, device=block_table.device).view(1, n_split, KV_SPLIT)
    past = (pos >= lengths.view(B, 1, 1)).view(B * n_split, 1, KV_SPLIT)
    return slots, past


def mla_decode_torch(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, *,
                     scale: float, block_size: int, latent_rank: int,
                     plan: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The split form, batched: [B, nH, D] → [B, nH, C] in q's dtype (softmax statistics in fp32).

    block_table must hold a multiple of KV_SPLIT / block_size blocks per row (pad with any valid
    block: positions at or past a row's length are masked); `plan` is decode_plan's result, if the
    caller keeps it across layers."""
    B, nH, D = q.shape
    C = latent_rank
    slots, past = plan if plan is not None else decode_plan(block_table, lengths, block_size)
    n_split = slots.shape[0] // max(B, 1)
    # --- the padded context of every sequence, [B·n_split, P, D]: one gather per layer
    ctx = cache.index_select(0, slots.view(-1)).view(*slots.shape, D)  # (index_select: ~5x faster than cache[slots])
    # --- per split: scores, max, exp-sum, weighted latent (bmm over fixed [nH, D] × [D, P] shapes)
    qs = q if n_split == 1 else q[:, None].expand(B, n_split, nH, D).reshape(B * n_split, nH, D)
    scores = torch.bmm(qs if qs.dtype == ctx.dtype else qs.to(ctx.dtype), ctx.transpose(1, 2))
    if scores.dtype != torch.float32:
        scores = scores.float()
    # A finite fill: a split wholly past the length gets weight exp(-1e30 - max) = 0 in the combine.
    scores = (scores * scale).masked_fill(past, -1e30)  # [B·n_split, nH, P]
    m = scores.amax(-1, keepdim=True)
    e = (scores - m).exp()
    den = e.sum(-1, keepdim=True)
    o = torch.bmm(e if e.dtype == ctx.dtype else e.to(ctx.dtype), ctx[:, :, :C])  # [B·n_split, nH, C]
    if o.dtype != torch.float32:
        o = o.float()
    if n_split == 1:
        out = o / den
    else:  # --- combine the splits in order
        m = m.view(B, n_split, nH, 1)
        # exp in float64, rounded back: a [B, n_split, nH, 1] tensor's elements take the vectorised
        # or the scalar fp32 exp (they round differently) by their place, which depends on B.
        w = (m - m.amax(1, keepdim=True)).double().exp().float()
        out = (o.view(B, n_split, nH, C) * w).sum(1) / (den.view(B, n_split, nH, 1) * w).sum(1)
    return out if out.dtype == q.dtype else out.to(q.dtype)
