"""Problems and tolerances shared by the kernel tests, the tuner and the benchmark.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative error bounds against the fp32 reference: (‖out − ref‖ / ‖ref‖, max |out − ref| / max |ref|).
# fp32 under the interpreter is numpy fp32; compiled fp32 tl.dot runs in tf32; fp16/bf16 also round
# the SiLU·up intermediate and each per-expert output before the sum over k.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-4),
    "tf32": (5e-3, 2e-2),
    "float16": (3e-3, 1e-2),
    "bfloat16": (2e-2, 6e-2),
}

ROUTINGS = ("random", "one_expert", "skip_experts", "zero_weights")


@dataclass
class MoEProblem:
    hidden: torch.Tensor  # [T, H]
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    topk_weights: torch.Tensor  # [T, k] fp32
    topk_ids: torch.Tensor  # [T, k] int32

    def args(self) -> tuple[torch.Tensor, ...]:
        return self.hidden, self.w13, self.w2, self.topk_weights, self.topk_ids


def random_routing(num_tokens: int, num_experts: int, top_k: int, *, routing: str = "random",
                   generator: torch.Generator | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_ids [T, k] (distinct experts per token) and fp32 topk_weights [T, k] of a routing kind.

    random: uniform choice; one_expert: every token picks the same k experts; skip_experts: only
    the first half of the experts (at least k) ever get a token; zero_weights: random, with every
    weight of the odd tokens and some other weights set to zero.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; one of {ROUTINGS}")
    pool = num_experts
    if routing == "skip_experts":
        pool = max(top_k, num_experts // 2)
    scores = torch.rand(num_tokens, pool, generator=generator)
    ids = scores.argsort(dim=1)[:, :top_k]
    if routing == "one_expert":
        ids = ids[:1].expand(num_tokens, top_k)
    weights = torch.rand(num_tokens, top_k, generator=generator) + 0.1
    weights = weights / weights.sum(dim=1, keepdim=True)
    if routing == "zero_weights":
        weights[1::2] = 0.0
        weights[:, 0] = torch.where(torch.rand(num_tokens, generator=generator) < 0.3, 0.0, weights[:, 0])
    return ids.to(torch.int32).contiguous().to(device), weights.contiguous().to(device)


def random_problem(num_tokens: int, hidden_size: int, inter: int, num_experts: int, top_k: int, *,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   routing: str = "random", seed: int = 0) -> MoEProblem:
    """Weights scaled so that every stage's output is O(1) (no overflow in fp16, no vanishing).

    Tensors are drawn on `device` itself: a DeepSeek-V3 layer's 7.5 G weights would take a minute
    to draw on a CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    device_gen = torch.Generator(device=device).manual_seed(seed) if torch.device(device).type != "cpu" else gen

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        if torch.device(device).type == "cpu":
            return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype)
        return torch.randn(*shape, generator=device_gen, device=device, dtype=dtype).mul_(scale)

    ids, weights = random_routing(num_tokens, num_experts, top_k, routing=routing, generator=gen, device=device)
    return MoEProblem(
        hidden=randn(num_tokens, hidden_size),
        w13=randn(num_experts, 2 * inter, hidden_size, scale=hidden_size**-0.5),
        w2=randn(num_experts, hidden_size, inter, scale=inter**-0.5),
        topk_weights=weights,
        topk_ids=ids,
    )


def moe_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(‖out − ref‖ / ‖ref‖, max |out − ref| / max |ref|) in fp64; NaN anywhere gives inf."""
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf"), float("inf")
    diff = out64 - ref64
    scale_norm = max(ref64.norm().item(), 1e-30)
    scale_max = max(ref64.abs().max().item() if ref64.numel() else 0.0, 1e-30)
    max_diff = diff.abs().max().item() if diff.numel() else 0.0
    return diff.norm().item() / scale_norm, max_diff / scale_max


def assert_moe_close(out: torch.Tensor, ref: torch.Tensor, tolerance: str) -> None:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    norm_tol, max_tol = TOLERANCES[tolerance]
    rel_norm, rel_max = moe_errors(out, ref)
    assert rel_norm <= norm_tol and rel_max <= max_tol, (
        f"{tolerance}: relative norm error {rel_norm:.3g} (limit {norm_tol:g}), "
        f"relative max error {rel_max:.3g} (limit {max_tol:g})"
    )
