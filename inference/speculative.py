"""MTP speculative decoding for one sequence: the mechanics, outside the batching engine.

Each step feeds the main model the last emitted token *and* the MTP layer's draft of the next one,
at two consecutive positions, in one forward (verification is batched with ordinary decoding);
`inference.mtp.accept` keeps the draft or replaces it, and when it is kept the main model's
logits at the draft's position give one more token for free. The MTP layer then runs at the
positions just verified (filling its own cache layer) and drafts from the last. Greedy output is
token for token the output without speculation; sampled output has exactly the same distribution.

The cache is one contiguous latent buffer per sequence ([layers + 1, max_len, C + dr]; the extra
layer is the MTP block's). A rejected draft's latent stays in the main layers at its position and
is overwritten by the next step, which writes that position again.

The batching engine does the same inside its step (inference/engine.py, `speculative`); this
single-sequence form is its reference in the tests and what `ops/bench/mtp.py` measures without --engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from inference.attention import expanded_attention
from inference.model import MLA, Transformer
from inference.mtp import accept


class _Contiguous:
    """Attention backend over one sequence's contiguous latent cache; queries at `start`.. attend
    causally to every cached position before and including their own."""

    def __init__(self, cache: torch.Tensor, start: int, count: int) -> None:
        self.cache, self.start, self.count = cache, start, count

    def __call__(self, layer: int, attn: MLA, q_nope: torch.Tensor, q_pe: torch.Tensor, c_kv: torch.Tensor,
                 k_pe: torch.Tensor) -> torch.Tensor:
        a, b = self.start, self.start + self.count
        self.cache[layer, a:b] = torch.cat((c_kv[0], k_pe[0]), dim=-1).to(self.cache.dtype)
        ctx = self.cache[layer, :b]
        C = attn.kv_lora_rank
        out = expanded_attention(attn, q_nope[0], q_pe[0], ctx[:, :C], ctx[:, C:], start=a, query_chunk=1 << 16)
        return out[None]


@dataclass
class Result:
    tokens: list[int]
    drafted: int = 0
    accepted: int = 0
    forwards: int = 0  # main-model forwards after the prefill
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The distribution a token is drawn from: one-hot argmax at temperature 0."""
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    return torch.softmax(logits.float() / temperature, dim=-1)


def _draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def generate(model: Transformer, prompt: list[int], max_tokens: int, *, speculate: bool = True,
             temperature: float = 0.0, seed: int = 0) -> Result:
    """Generate `max_tokens` tokens after `prompt` (no stop tokens), with or without MTP drafts."""
    if speculate and model.mtp is None:
        raise ValueError("speculative decoding needs the MTP layer: load_model(..., mtp=True)")
    args, dev = model.args, model.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = len(prompt)
    cache = torch.zeros(args.num_hidden_layers + 1, n + max_tokens + 2, args.latent_dim, dtype=model.dtype,
                        device=dev)
    started = time.perf_counter()
    ids = torch.tensor([prompt], device=dev)
    pos = torch.arange(n, device=dev)
    hidden = model.hidden_states(ids, pos, _Contiguous(cache, 0, n))
    tok = int(_draw(_probs(model.lm_head(hidden[0, -1:]), temperature), gen))
    out = [tok]
    result = Result(out)

    def draft_from(next_ids: list[int], h: torch.Tensor, start: int) -> tuple[int, torch.Tensor]:
        m = model.mtp_hidden(torch.tensor([next_ids], device=dev), h, torch.arange(start, start + len(next_ids),
                                                                                   device=dev),
                             _Contiguous(cache, start, len(next_ids)))
        q = _probs(model.lm_head(m[0, -1:]), temperature)
        return int(_draw(q, gen)), q

    if speculate:
        draft, q = draft_from(prompt[1:] + [tok], hidden, 0)
    p_len = n  # position of `tok`
    while len(out) < max_tokens:
        if not speculate or len(out) + 2 > max_tokens:  # a draft only while both its tokens fit, as the engine
            h = model.hidden_states(torch.tensor([[tok]], device=dev), torch.tensor([p_len], device=dev),
                                    _Contiguous(cache, p_len, 1))
            tok = int(_draw(_probs(model.lm_head(h[0]), temperature), gen))
            out.append(tok)
            p_len += 1
            result.forwards += 1
            continue
        h = model.hidden_states(torch.tensor([[tok, draft]], device=dev), torch.tensor([p_len, p_len + 1], device=dev),
                                _Contiguous(cache, p_len, 2))
        result.forwards += 1
        p = _probs(model.lm_head(h[0]), temperature)  # [2, V]: at tok's position, at the draft's
        u = torch.rand(2, generator=gen)
        chosen, ok = accept(p[:1], q, torch.tensor([draft]), u[:1], u[1:])
        result.drafted += 1
        if bool(ok[0]):
            result.accepted += 1
            bonus = int(_draw(p[1:], gen))
            out += [draft, bonus]
            draft, q = draft_from([draft, bonus], h, p_len)
            tok, p_len = bonus, p_len + 2
        else:
            tok = int(chosen[0])
            out.append(tok)
            draft, q = draft_from([tok], h[:, :1], p_len)
            p_len += 1
    result.tokens = out[:max_tokens]
    result.seconds = time.perf_counter() - started
    return result
