"""Multi-token prediction: exact speculative acceptance of the MTP layer's drafts.

The layer itself is `inference.model.MTPLayer` (loaded by `load_model(..., mtp=True)`). Its
embedding and head are the main model's (V3's checkpoint carries copies under the MTP layer's
prefix; the loader does not load them twice). Its block has its own attention, so a decode loop
that uses it caches one latent layer more (cache layer num_hidden_layers).

`accept` is the speculative-sampling rule (Leviathan et al.; Chen et al.): a draft d drawn from
the drafter's distribution q is kept with probability min(1, p(d)/q(d)), where p is the main
model's distribution at the same position; otherwise a token is drawn from max(0, p − q),
renormalised. The emitted token is then distributed exactly as p. With one-hot p and q (greedy)
it keeps d iff d = argmax p and otherwise emits argmax p: greedy output is unchanged by speculation.

In the batching engine a sampled request's randomness stays a function of (seed, tokens generated
before): the draft of its token n is drawn from q with `row_key(seed, n, DRAFT_STREAM)` and token n's
acceptance test and residual draw use `row_key(seed, n, ACCEPT_STREAM)` (`verify`), each independent
of the other and of the ordinary sample's key `row_key(seed, n)`, which draws a token from p when no
draft is verified for it (the bonus token after a kept draft among them).
"""

from __future__ import annotations

import torch

from inference.sampler import uniform

DRAFT_STREAM, ACCEPT_STREAM = 1, 2  # row_key streams of a draft's draw and of its acceptance test


def accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, uniform: torch.Tensor,
           resample_uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative acceptance for a batch of rows.

    p, q [n, V]: the main model's and the drafter's distributions at the draft's position (rows sum
    to 1; one-hot rows for greedy); draft [n]: the drafted tokens (drawn from q); uniform [n] and
    resample_uniform [n]: independent U(0, 1) draws. Returns (token [n], accepted [n] bool): the
    draft where accepted, else a token drawn from the residual max(0, p − q) by inverse CDF.
    """
    rows = torch.arange(draft.shape[0], device=draft.device)
    p_d, q_d = p[rows, draft], q[rows, draft]
    accepted = uniform * q_d < p_d  # u < p/q, without dividing by a zero q
    residual = (p - q).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)  # p = q: any rejection is measure zero
    cdf = residual.cumsum(dim=-1)
    drawn = torch.searchsorted(cdf, (resample_uniform * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    drawn = drawn.clamp_max(p.shape[-1] - 1)
    return torch.where(accepted, draft, drawn), accepted


def verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`accept` with both uniforms of each row drawn from its key (row_key(seed, n, ACCEPT_STREAM)):
    the tokens emitted at the drafts' positions, [n]. p and q are the sampler's filtered
    distributions, which are not renormalised (its race does not need it; the rule's ratio does)."""
    u = uniform(keys, 2)
    return accept(p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True), draft, u[:, 0], u[:, 1])[0]
