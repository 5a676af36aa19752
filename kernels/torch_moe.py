"""The torch fast path: what workers without a GPU run.

The T·k (token, expert) pairs are sorted by expert once; each active expert then does one
gate/up matmul and one down matmul over exactly the rows routed to it, and the weighted rows are
added back into their tokens with one index_add_ per expert. The only host sync is reading the
per-expert counts to split the sorted pairs.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token,
P = T·k pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_torch(
    hidden: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
) -> torch.Tensor:  # [T, H]
    num_tokens, top_k = topk_ids.shape
    num_experts = w13.shape[0]
    inter = w13.shape[1] // 2

    flat_ids = topk_ids.reshape(-1)  # [P]
    order = torch.argsort(flat_ids, stable=True)  # [P] pair ids grouped by expert
    counts = torch.bincount(flat_ids, minlength=num_experts).tolist()  # the one host sync
    token_of_pair = order // top_k  # [P]
    weight_of_pair = topk_weights.reshape(-1)[order]  # [P]

    # Accumulate in fp32 when the activations are half precision: k partial sums per token.
    acc_dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    out = torch.zeros(num_tokens, hidden.shape[1], dtype=acc_dtype, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = slice(start, start + count)
        start += count
        tokens = token_of_pair[rows]  # [n]
        x = hidden.index_select(0, tokens)  # [n, H]
        gate_up = x @ w13[expert].t()  # [n, 2I]
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n, I]
        y = act @ w2[expert].t()  # [n, H]
        y = y.to(acc_dtype) * weight_of_pair[rows, None].to(acc_dtype)
        out.index_add_(0, tokens, y)
    return out.to(hidden.dtype)
