"""The batched sampler: one pass over a step's [B, V] logits on the device.

Every row carries its own parameters (temperature, top-p, top-k, min-p, presence and frequency
penalties, a random key); rows never interact, so a request samples the same tokens alone or in any
batch. Randomness is counter-based: the uniform draw for (row, token v) is a hash of the request's
seed, how many tokens it has generated and v, computed with integer tensor ops on the device. A
sample is an exponential race over the filtered distribution, argmax(p_v / E_v) with E_v = -log u_v,
which draws v with probability p_v (the Gumbel-max trick) without a cumulative sum or multinomial.

The host decides which stages run from the parameters it already knows (no stage runs for a batch
that does not use it: an all-greedy step is one argmax). Top-k uses a partial selection of the
largest k; top-p needs the sorted distribution, so it sorts (one batched sort, only when some row
asks for top-p without a top-k; with a top-k it works inside the k kept values).

Filters, in order: penalties (over the tokens generated so far), the caller's token mask, the
temperature, top-k, top-p (the smallest prefix of the sorted distribution whose mass reaches top_p;
tokens tied with its last member are kept too), min-p (tokens below min_p · max p are dropped).
Logprobs are of the raw model distribution (log_softmax of the unmodified logits).

Public API: `SamplingRows`, `SampleOutput`, `sample`, `row_key`, `uniform`, `draw`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: int) -> int:
    """lowbias32 (Wellons): a 32-bit integer hash; the host twin of `_mix32_t`."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def _mix32_t(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32); products wrap mod 2^64 and are
    masked back to their low 32 bits, so CPU and CUDA agree bit for bit."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def row_key(seed: int, step: int, stream: int = 0) -> int:
    """The 32-bit key of a request's `step`-th sample (step = tokens generated before it). `stream`
    > 0 names another use of randomness at the same step (MTP's draft and its acceptance test,
    inference/mtp.py), whose uniforms are independent of the sample's."""
    h = _mix32(seed & _M32)
    h = _mix32(h ^ ((seed >> 32) & _M32))
    key = _mix32(h ^ (step & _M32) ^ 0x9E3779B9)
    return key if stream == 0 else _mix32(key ^ _mix32(stream * 0x85EBCA6B))


def uniform(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B] int64 keys → [B, V] float32 uniforms in (0, 1), a pure function of (key, v)."""
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = _mix32_t((v[None, :] * 0x9E3779B1 + keys[:, None]) & _M32)
    h = _mix32_t(h ^ keys[:, None])
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def draw(probs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One token per row of probs [B, V] (rows sum to 1 or hold zeros where filtered out), drawn
    with the rows' keys: the exponential race argmax(p_v / E_v), E_v = -log u_v."""
    return (probs / -uniform(keys, probs.shape[-1]).log()).argmax(-1)


@dataclass
class SamplingRows:
    """Per-row parameters of one step, on the logits' device. `greedy` rows take the argmax.

    The flags say which stages any row uses; they are host facts (the scheduler knows every
    request's parameters), so deciding on them costs no device sync."""

    temperature: torch.Tensor  # [B] float32 (1.0 on greedy rows)
    top_p: torch.Tensor  # [B] float32 (1.0 = off)
    top_k: torch.Tensor  # [B] int64 (0 = off)
    min_p: torch.Tensor  # [B] float32 (0.0 = off)
    presence: torch.Tensor  # [B] float32
    frequency: torch.Tensor  # [B] float32
    keys: torch.Tensor  # [B] int64 row_key of each row's sample
    greedy: torch.Tensor  # [B] bool
    any_sampled: bool
    all_sampled: bool
    any_penalty: bool
    max_top_k: int  # largest top_k of a sampled row, 0 if none asks
    top_p_without_k: bool  # a sampled row asks for top-p but not top-k (needs the full sort)
    any_top_p: bool
    any_min_p: bool


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] float32, the chosen tokens' raw logprobs
    top_ids: torch.Tensor | None  # [B, n] int64
    top_logprobs: torch.Tensor | None  # [B, n] float32


def build_rows(params: list[dict[str, float | int | bool]], keys: list[int],
               device: torch.device) -> SamplingRows:
    """SamplingRows from plain per-row values (tests and simple callers; the engine fills its own
    reused buffers). Each dict: temperature, top_p, top_k, min_p, presence, frequency."""
    greedy = [float(p.get("temperature", 1.0)) <= 1e-5 for p in params]

    def col(name: str, default: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([p.get(name, default) for p in params], dtype=dtype, device=device)

    temp = torch.tensor([1.0 if g else float(p.get("temperature", 1.0)) for p, g in zip(params, greedy, strict=True)],
                        dtype=torch.float32, device=device)
    return rows_from_tensors(
        temperature=temp, top_p=col("top_p", 1.0, torch.float32), top_k=col("top_k", 0, torch.int64),
        min_p=col("min_p", 0.0, torch.float32), presence=col("presence", 0.0, torch.float32),
        frequency=col("frequency", 0.0, torch.float32), keys=torch.tensor(keys, dtype=torch.int64, device=device),
        greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        host=[(g, float(p.get("top_p", 1.0)), int(p.get("top_k", 0)), float(p.get("min_p", 0.0)),
               bool(p.get("presence", 0.0) or p.get("frequency", 0.0))) for p, g in zip(params, greedy, strict=True)])


def rows_from_tensors(*, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor, min_p: torch.Tensor,
                      presence: torch.Tensor, frequency: torch.Tensor, keys: torch.Tensor, greedy: torch.Tensor,
                      host: list[tuple[bool, float, int, float, bool]]) -> SamplingRows:
    """`host`: per row (greedy, top_p, top_k, min_p, has_penalty) as the host knows them."""
    sampled = [h for h in host if not h[0]]
    return SamplingRows(
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, presence=presence, frequency=frequency,
        keys=keys, greedy=greedy, any_sampled=bool(sampled), all_sampled=len(sampled) == len(host),
        any_penalty=any(h[4] for h in host), max_top_k=max((h[2] for h in sampled), default=0),
        top_p_without_k=any(h[1] < 1.0 and h[2] <= 0 for h in sampled),
        any_top_p=any(h[1] < 1.0 for h in sampled), any_min_p=any(h[3] > 0.0 for h in sampled))


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """OpenAI penalties: logit − frequency·count − presence·[count > 0] (counts [B, V] float32)."""
    return logits - rows.frequency[:, None] * counts - rows.presence[:, None] * (counts > 0).to(logits.dtype)


def filtered_probs(logits: torch.Tensor, rows: SamplingRows, vocab: int) -> torch.Tensor:
    """The distribution each sampled row draws from, [B, V] float32 (zeros where filtered out)."""
    probs = (logits / rows.temperature[:, None]).softmax(-1)
    if rows.max_top_k > 0 or rows.any_top_p:
        if rows.top_p_without_k:
            vals = probs.sort(dim=-1, descending=True).values  # [B, V]
        else:
            vals = probs.topk(min(rows.max_top_k, vocab), dim=-1).values  # [B, K] sorted
        width = vals.shape[-1]
        # Kept count per row: top-k first (0 = all), then top-p inside what top-k kept.
        k = torch.where(rows.top_k > 0, rows.top_k.clamp(max=width), torch.full_like(rows.top_k, width))
        if rows.any_top_p:
            pos = torch.arange(width, device=vals.device)
            in_k = pos[None, :] < k[:, None]
            kept = vals * in_k
            mass = kept.sum(-1, keepdim=True)
            # A token is in the nucleus when the mass before it (renormalised over top-k) is ≤ top_p.
            before = (kept.cumsum(-1) - kept) / mass
            nucleus = (before <= rows.top_p[:, None]) & in_k
            k = nucleus.sum(-1).clamp(min=1)
        threshold = vals.gather(1, (k - 1)[:, None])  # [B, 1] smallest kept probability
        # Rows that ask for neither keep everything, also when `vals` holds only a batch mate's top-k.
        unfiltered = ((rows.top_k <= 0) & (rows.top_p >= 1.0))[:, None]
        threshold = threshold.masked_fill(unfiltered, 0.0)
        probs = probs.masked_fill(probs < threshold, 0.0)
    if rows.any_min_p:
        top = probs.amax(-1, keepdim=True)
        probs = probs.masked_fill(probs < rows.min_p[:, None] * top, 0.0)
    return probs


def sample(logits: torch.Tensor, rows: SamplingRows | None, *, counts: torch.Tensor | None = None,
           allowed: torch.Tensor | None = None, want_logprobs: bool = False, top_logprobs: int = 0,
           verify: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> SampleOutput:
    """logits [B, V] (any float dtype) → SampleOutput, all on the device, no host sync.

    rows: None when every row is greedy and unpenalised (nothing but the logits is needed);
    counts: [B, V] float32 tokens generated so far per row (needed when a row has penalties);
    allowed: optional [B, V] bool, False = the token may not be chosen (a grammar's mask; a row
    with nothing allowed falls back to its unmasked choice rather than an arbitrary token);
    want_logprobs / top_logprobs: the chosen tokens' logprobs and the n most likely (ids, logprobs)
    per row, of the raw model distribution; verify: when rows sample, called with (tokens [B], the
    filtered distributions [B, V]) and returns the tokens to emit (the engine's MTP verification puts
    the rejection rule's choice on a verifying row); logprobs are of what it returns."""
    raw = logits.float()
    x = raw
    if rows is not None and rows.any_penalty:
        assert counts is not None, "rows with penalties need counts"
        x = apply_penalties(x, counts, rows)
    if allowed is not None:
        x = x.masked_fill(~allowed, float("-inf"))
        x = torch.where(allowed.any(-1, keepdim=True), x, raw)
    V = x.shape[-1]
    greedy_tok = x.argmax(-1)
    if rows is not None and rows.any_sampled:
        probs = filtered_probs(x, rows, V)
        sampled_tok = draw(probs, rows.keys)
        tok = sampled_tok if rows.all_sampled else torch.where(rows.greedy, greedy_tok, sampled_tok)
        if verify is not None:
            tok = verify(tok, probs)
    else:
        tok = greedy_tok
    lp = ids = tlp = None
    if want_logprobs or top_logprobs:
        logp = raw.log_softmax(-1)
        if want_logprobs:
            lp = logp.gather(1, tok[:, None])[:, 0]
        if top_logprobs:
            tlp, ids = logp.topk(min(top_logprobs, V), dim=-1)
    return SampleOutput(tok, lp, ids, tlp)
