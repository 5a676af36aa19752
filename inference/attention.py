"""Attention backends: what an MLA layer calls with its queries and its tokens' latents.

Legend as in inference/model.py (T query tokens, S context tokens, nH heads, dn/dr/dv head widths,
C latent, D = C + dr the cached row). Head counts always come from the tensors, never from the
model's arguments: a tensor-parallel rank holds only its share of the heads.

- `CausalAttention`: a plain forward; every batch row attends causally within itself.
- `PagedAttention`: one engine step over the paged latent cache. It writes the step's latents into
  their cache slots, then attends
    * prefill spans (a chunk of one sequence's prompt, whose earlier tokens are already cached) in the
      expanded form — the latent through kv_b_proj into per-head keys and values. On CPU the context
      is expanded and attended one key block at a time (flash kernel, blocks merged by log-sum-exp),
      so memory is bounded by the block and the step, not the context; elsewhere
      scaled_dot_product_attention runs in query chunks over the whole expanded context (memory grows
      with chunk × context, never with a [T, S] score or mask tensor of the whole prompt);
    * every decoding sequence at once in the absorbed form: queries through W_UK, attention over the
      576-wide latent rows themselves (`kernels.mla_decode`: the Triton kernel reads the block tables
      on the device; on CPU the torch split form), outputs through W_UV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kernels import rows
from kernels.mla import decode_plan, mla_backend_for, mla_decode

if TYPE_CHECKING:
    from inference.kvcache import KVCache
    from inference.model import MLA


def expanded_attention(attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                       *, start: int, query_chunk: int) -> torch.Tensor:
    """Causal attention of T new queries at positions start..start+T-1 over S = start + T context rows.

    q_nope [T, nH, dn], q_pe [T, nH, dr], c_kv [S, C], k_pe [S, dr] → [T, nH, dv]. On CPU see
    `_blocked_cpu`; elsewhere the whole context is expanded and the queries attend in chunks."""
    q = torch.cat([q_nope, q_pe], dim=-1).transpose(0, 1)[None]  # [1, nH, T, dqk]
    if q.device.type == "cpu":
        return _blocked_cpu(attn, q, c_kv, k_pe, start=start, block=query_chunk)
    T = q.shape[2]
    k, v = _expand(attn, c_kv, k_pe, pad=False)
    if start == 0 and T <= query_chunk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.softmax_scale)
        return out[0].transpose(0, 1)
    outs = []
    for lo in range(0, T, query_chunk):
        hi = min(lo + query_chunk, T)
        end = start + hi  # keys past the chunk's last query are never visible to it
        visible = torch.arange(end, device=q.device)[None, :] <= torch.arange(start + lo, end, device=q.device)[:, None]
        outs.append(F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, :end], v[:, :, :end], attn_mask=visible,
                                                   scale=attn.softmax_scale))
    return torch.cat(outs, dim=2)[0].transpose(0, 1)


def _expand(attn: MLA, c_kv: torch.Tensor, k_pe: torch.Tensor, *, pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys [1, nH, S, dqk] and values [1, nH, S, dv] of S latent rows (values zero-padded to
    dqk with `pad`)."""
    S = c_kv.shape[0]
    kv = attn.kv_b_proj(c_kv).view(S, -1, attn.dn + attn.dv)  # [S, nH, dn + dv]
    k_nope, v = kv.split([attn.dn, attn.dv], dim=-1)
    nH = kv.shape[1]
    k = torch.cat([k_nope, k_pe[:, None, :].expand(S, nH, k_pe.shape[-1])], dim=-1)
    if pad and attn.dv < k.shape[-1]:
        v = F.pad(v, (0, k.shape[-1] - attn.dv))
    return k.transpose(0, 1)[None], v.transpose(0, 1)[None]


def _blocked_cpu(attn: MLA, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, *, start: int,
                 block: int) -> torch.Tensor:
    """The CPU prefill: memory bounded by `block` and the step's T, never by the context length.

    The context is taken in key blocks of `block` rows (at multiples of `block` from position 0);
    each block's latent is expanded into keys and values on its own, and PyTorch's CPU flash kernel
    (blocked, online softmax) attends every query that sees the block — those past it without a mask,
    those inside it causally — returning each row's log-sum-exp, with which the blocks' partial
    outputs are merged. Values are zero-padded to the query/key width for that kernel (it wants one
    head size); SDPA's math path, which it would take otherwise, materialises a [heads, queries,
    context] score tensor (1 GiB per 1,024 queries at a 32k context for the bench model).
    q [1, nH, T, dqk] → [T, nH, dv]."""
    T = q.shape[2]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    out = torch.zeros(q.shape, dtype=torch.float32)
    lse = torch.full(q.shape[:3], float("-inf"))  # [1, nH, T]
    for k0 in range(0, start + T, block):
        k1 = min(k0 + block, start + T)
        k, v = _expand(attn, c_kv[k0:k1], k_pe[k0:k1], pad=True)
        lo, mid = max(k0 - start, 0), max(k1 - start, 0)  # the first query inside the block, the first past it
        if lo < mid:  # queries inside the block: causal (a mask where the block starts before them)
            mask = None
            if k0 < start:  # additive, in q's dtype (what the kernel takes)
                hidden = torch.arange(k0, k1)[None, :] > torch.arange(start, k1)[:, None]
                mask = torch.zeros(hidden.shape, dtype=q.dtype).masked_fill_(hidden, float("-inf"))
            o, l_b = flash(q[:, :, lo:mid], k, v, 0.0, mask is None, attn_mask=mask, scale=attn.softmax_scale)
            _merge(out[:, :, lo:mid], lse[:, :, lo:mid], o, l_b)
        if mid < T:  # queries past the block see all of it
            o, l_b = flash(q[:, :, mid:], k, v, 0.0, False, scale=attn.softmax_scale)
            _merge(out[:, :, mid:], lse[:, :, mid:], o, l_b)
    return out[0, :, :, : attn.dv].to(q.dtype).transpose(0, 1)


def _merge(out: torch.Tensor, lse: torch.Tensor, o: torch.Tensor, l_b: torch.Tensor) -> None:
    """Fold one key block's softmax-normalised output `o` and log-sum-exp `l_b` into the running
    (out, lse), in place."""
    new = torch.logaddexp(lse, l_b)
    out.mul_((lse - new).exp()[..., None]).add_(o.float() * (l_b - new).exp()[..., None])
    lse.copy_(new)


def absorbed_decode(attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, cache: torch.Tensor,
                    block_table: torch.Tensor, lengths: torch.Tensor, *, block_size: int,
                    max_splits: int | None = None, plan: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> torch.Tensor:
    """One new query per sequence against its cached latent: q_nope [B, nH, dn], q_pe [B, nH, dr],
    cache [slots, D], block_table [B, nb], lengths [B] (tokens cached, the new one included) → [B, nH, dv]."""
    w_uk, w_uv = attn.absorbed_weights(q_nope.dtype)  # [nH, dn, C], [nH, dv, C]
    q_lat = rows.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)  # [B, nH, C] (B rows: floored, kernels/rows.py)
    q = torch.cat([q_lat, q_pe], dim=-1)  # [B, nH, D]
    o_lat = mla_decode(q, cache, block_table, lengths, scale=attn.softmax_scale, block_size=block_size,
                       latent_rank=w_uk.shape[-1], max_splits=max_splits, plan=plan)
    return rows.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # [B, nH, dv]


class CausalAttention:
    """Backend for a plain forward: every row of the batch attends causally within itself."""

    def __call__(self, layer: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor,
                 k_pe: torch.Tensor) -> torch.Tensor:
        B, T, nH, dn = q_nope.shape
        kv = attn.kv_b_proj(c_kv).view(B, T, nH, -1)
        k_nope, v = kv.split([dn, kv.shape[-1] - dn], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, T, nH, k_pe.shape[-1])], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                             scale=attn.softmax_scale)
        return out.transpose(1, 2)  # [B, T, nH, dv]


@dataclass
class PrefillSpan:
    rows: tuple[int, int]  # packed rows [a, b) of the step
    start: int  # position of the span's first token; positions before it are cached
    ctx_slots: torch.Tensor  # [start + b - a] cache slots of the whole visible context, in order


class PagedAttention:
    """Backend for one engine step (see the module docstring). Decode rows come after every prefill
    span, from `decode_start` to the end of the packed step."""

    def __init__(self, cache: KVCache, write_slots: torch.Tensor, prefill: list[PrefillSpan], *, decode_start: int,
                 block_table: torch.Tensor | None, lengths: torch.Tensor | None, query_chunk: int,
                 max_splits: int | None = None):
        self.cache = cache
        self.write_slots = write_slots  # [N] cache slot of every packed token
        self.prefill = prefill
        self.decode_start = decode_start
        self.block_table = block_table  # [Bd, nb] on the device
        self.lengths = lengths  # [Bd]
        self.query_chunk = query_chunk
        self.max_splits = max_splits
        self._plan: tuple[torch.Tensor, torch.Tensor] | None = None  # the decode plan, made at the first layer

    def __call__(self, layer: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor,
                 k_pe: torch.Tensor) -> torch.Tensor:
        data = self.cache.data[layer]  # [slots, C + dr]
        C = c_kv.shape[-1]
        rows = torch.cat([c_kv[0], k_pe[0]], dim=-1)
        data.index_copy_(0, self.write_slots, rows if rows.dtype == data.dtype else rows.to(data.dtype))
        outs = []
        for span in self.prefill:
            a, b = span.rows
            ctx = data[span.ctx_slots]
            outs.append(expanded_attention(attn, q_nope[0, a:b], q_pe[0, a:b], ctx[:, :C].to(q_nope.dtype),
                                           ctx[:, C:].to(q_nope.dtype), start=span.start,
                                           query_chunk=self.query_chunk))
        if self.block_table is not None and self.lengths is not None:
            d = self.decode_start
            if self._plan is None and mla_backend_for(q_nope) == "torch":
                self._plan = decode_plan(self.block_table, self.lengths, self.cache.block_size)
            outs.append(absorbed_decode(attn, q_nope[0, d:], q_pe[0, d:], data, self.block_table, self.lengths,
                                        block_size=self.cache.block_size, max_splits=self.max_splits,
                                        plan=self._plan))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out[None]  # [1, N, nH, dv]
