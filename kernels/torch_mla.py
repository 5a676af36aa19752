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


def mla_decode_torch(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, *,
                     scale: float, block_size: int, latent_rank: int) -> torch.Tensor:
    """The split form, batched: [B, nH, D] → [B, nH, C] in q's dtype (softmax statistics in fp32).

    block_table must hold a multiple of KV_SPLIT / block_size blocks per row (pad with any valid
    block: positions at or past a row's length are masked)."""
    B, nH, D = q.shape
    C = latent_rank
    per_split = KV_SPLIT // block_size
    nb = block_table.shape[1]
    if nb % per_split:
        raise ValueError(f"block_table rows hold {nb} blocks, not a multiple of {per_split}")
    n_split = nb // per_split
    # --- gather the padded context once for every sequence: [B·n_split, P, D]
    offs = torch.arange(block_size, device=q.device)
    slots = (block_table.long()[:, :, None] * block_size + offs).reshape(B * n_split, KV_SPLIT)
    ctx = cache[slots]
    # --- per split: scores, max, exp-sum, weighted latent (bmm over fixed [nH, D] × [D, P] shapes)
    qs = q[:, None].expand(B, n_split, nH, D).reshape(B * n_split, nH, D).to(ctx.dtype)
    scores = torch.bmm(qs, ctx.transpose(1, 2)).float() * scale  # [B·n_split, nH, P]
    pos = torch.arange(nb * block_size, device=q.device).view(1, n_split, 1, KV_SPLIT)
    valid = (pos < lengths.view(B, 1, 1, 1)).reshape(B * n_split, 1, KV_SPLIT)
    scores = scores.masked_fill(~valid, float("-inf"))
    m = scores.amax(-1, keepdim=True)  # [B·n_split, nH, 1]; -inf for a split past the length
    m_safe = m.masked_fill(m == float("-inf"), 0.0)
    e = (scores - m_safe).exp()
    l_split = e.sum(-1, keepdim=True)
    o = torch.bmm(e.to(ctx.dtype), ctx[:, :, :C]).float()  # [B·n_split, nH, C]
    # --- combine the splits in order
    m = m.view(B, n_split, nH, 1)
    big = m.amax(1, keepdim=True)
    w = (m - big).exp()  # 0 for empty splits
    denom = (l_split.view(B, n_split, nH, 1) * w).sum(1)
    return ((o.view(B, n_split, nH, C) * w).sum(1) / denom).to(q.dtype)
