"""The torch fast path: what workers without a GPU run.

The T·k (token, expert) pairs are sorted by expert once; each active expert then does one
gate/up matmul and one down matmul over exactly the rows routed to it, writing its weighted rows
into its slice of a sorted buffer; one permutation and a sum over k give the output. The only host
sync is reading the per-expert counts to split the sorted pairs.

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

    # Each expert's rows land in one slice of a buffer in sorted order; one permutation puts them
    # back at their pairs and a sum over k finishes (index_add_ per expert is far slower on CPU).
    acc_dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    sorted_out = torch.empty(num_tokens * top_k, hidden.shape[1], dtype=acc_dtype, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = slice(start, start + count)
        start += count
        x = hidden.index_select(0, token_of_pair[rows])  # [n, H]
        gate_up = x @ w13[expert].t()  # [n, 2I]
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n, I]
        y = act @ w2[expert].t()  # [n, H]
        torch.mul(y, weight_of_pair[rows, None], out=sorted_out[rows])
    per_pair = torch.empty_like(sorted_out)
    per_pair[order] = sorted_out  # [P, H], row p for pair p
    out = per_pair.view(num_tokens, top_k, -1).sum(dim=1)
    return out.to(hidden.dtype)
