"""The DeepSeek V2/V3 model family in one file: MLA attention, YaRN rotary, dense and MoE layers.

Shape legend used in the comments:
  B batch, T query tokens, S context (key) tokens, N packed tokens of a whole engine step,
  H hidden size, nH attention heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim,
  C = kv_lora_rank (the cached latent), Q = q_lora_rank, E routed experts, I moe_intermediate_size,
  k experts per token, G expert groups, V vocabulary.

The model does not own a KV cache. Every attention layer computes its queries and the per-token
latent (c_kv, k_pe) and hands them to an *attention backend* (inference/attention.py):
`CausalAttention` attends within the given tokens (plain `forward`), the engine's `PagedAttention`
writes them into its block cache and attends over each sequence's cached context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from inference.attention import CausalAttention
from inference.linear import SINGLE, Linear, TensorParallel, VocabEmbedding, fused
from inference.moe import routed_experts
from kernels import rows

SCORING_FUNCS = ("sigmoid", "softmax")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")


class ConfigError(ValueError):
    """config.json holds a value this implementation does not support (the message names it)."""


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int  # H
    intermediate_size: int  # dense-layer MLP width
    moe_intermediate_size: int  # I, per routed/shared expert
    num_hidden_layers: int
    num_attention_heads: int  # nH
    # MLA
    q_lora_rank: int | None  # Q; None = plain q_proj (V2-Lite)
    kv_lora_rank: int  # C
    qk_nope_head_dim: int  # dn
    qk_rope_head_dim: int  # dr
    v_head_dim: int  # dv
    attention_bias: bool = False
    # MoE
    n_routed_experts: int | None = None  # E; None = no MoE layers at all
    n_shared_experts: int | None = None
    num_experts_per_tok: int = 1  # k
    n_group: int = 1  # G
    topk_group: int = 1
    topk_method: str = "greedy"  # noaux_tc (V3) | greedy | group_limited_greedy (V2)
    scoring_func: str = "softmax"  # sigmoid (V3) | softmax (V2)
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    # rotary / YaRN
    rope_theta: float = 10000.0
    rope_interleave: bool = True
    rope_type: str = "default"  # default | yarn
    rope_factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    max_position_embeddings: int = 4096
    # misc
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "deepseek_v3"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values cached per token per layer: the latent plus the rotary key part (576 for V2/V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def is_moe_layer(self, i: int) -> bool:
        return (
            self.n_routed_experts is not None
            and i >= self.first_k_dense_replace
            and i % self.moe_layer_freq == 0
        )

    @property
    def softmax_scale(self) -> float:
        scale: float = self.qk_head_dim**-0.5
        if self.rope_type == "yarn" and self.mscale_all_dim:
            m = yarn_mscale(self.rope_factor, self.mscale_all_dim)
            scale = scale * m * m
        return scale

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelArgs:
        """Build from a Hugging Face config.json (old rope_theta/rope_scaling or new rope_parameters)."""

        def need(key: str) -> Any:
            if key not in cfg or cfg[key] is None:
                raise ConfigError(f"config.json: required key {key!r} is missing")
            return cfg[key]

        model_type = cfg.get("model_type", "deepseek_v3")
        if model_type not in ("deepseek_v2", "deepseek_v3"):
            raise ConfigError(f"config.json: model_type {model_type!r} is not supported (deepseek_v2, deepseek_v3)")
        quant = cfg.get("quantization_config")
        if quant:
            method = quant.get("quant_method", "?") if isinstance(quant, dict) else quant
            if method != "fp8":
                raise ConfigError(f"config.json: quantization_config (quant_method={method!r}) is not supported "
                                  "(fp8 with 128x128 weight blocks is)")
            block = list(quant.get("weight_block_size") or [128, 128])
            fmt = quant.get("fmt", "e4m3")
            if block != [128, 128] or fmt != "e4m3":
                raise ConfigError(f"config.json: quantization_config weight_block_size {block} / fmt {fmt!r} is not "
                                  "supported (DeepSeek's [128, 128] e4m3)")
        v3 = model_type == "deepseek_v3"
        scoring = cfg.get("scoring_func") or ("sigmoid" if v3 else "softmax")
        topk_method = cfg.get("topk_method") or ("noaux_tc" if v3 else "greedy")
        if scoring not in SCORING_FUNCS:
            raise ConfigError(f"config.json: scoring_func {scoring!r} is not supported {SCORING_FUNCS}")
        if topk_method not in TOPK_METHODS:
            raise ConfigError(f"config.json: topk_method {topk_method!r} is not supported {TOPK_METHODS}")
        hidden_act = cfg.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ConfigError(f"config.json: hidden_act {hidden_act!r} is not supported (silu)")

        # Rotary: new configs nest everything in rope_parameters; old ones have rope_theta + rope_scaling.
        rope = dict(cfg.get("rope_parameters") or {})
        if not rope:
            rope = dict(cfg.get("rope_scaling") or {})
            rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in ("default", "yarn"):
            raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (default, yarn)")
        max_pos = int(cfg.get("max_position_embeddings", 4096))
        rope_kwargs: dict[str, Any] = {}
        if rope_type == "yarn":
            orig = int(rope.get("original_max_position_embeddings") or max_pos)
            factor = rope.get("factor") or max_pos / orig
            rope_kwargs = dict(
                rope_factor=float(factor),
                original_max_position_embeddings=orig,
                beta_fast=float(rope.get("beta_fast") or 32),
                beta_slow=float(rope.get("beta_slow") or 1),
                mscale=float(rope.get("mscale", 1.0) if rope.get("mscale") is not None else 1.0),
                mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
                attention_factor=rope.get("attention_factor"),
            )

        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        n_routed = cfg.get("n_routed_experts")
        args = cls(
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            intermediate_size=need("intermediate_size"),
            moe_intermediate_size=cfg.get("moe_intermediate_size") or need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=need("num_attention_heads"),
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=need("kv_lora_rank"),
            qk_nope_head_dim=need("qk_nope_head_dim"),
            qk_rope_head_dim=need("qk_rope_head_dim"),
            v_head_dim=need("v_head_dim"),
            attention_bias=bool(cfg.get("attention_bias", False)),
            n_routed_experts=n_routed,
            n_shared_experts=cfg.get("n_shared_experts"),
            num_experts_per_tok=cfg.get("num_experts_per_tok") or 1,
            n_group=cfg.get("n_group") or 1,
            topk_group=cfg.get("topk_group") or 1,
            topk_method=topk_method,
            scoring_func=scoring,
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
            first_k_dense_replace=cfg.get("first_k_dense_replace") or 0,
            moe_layer_freq=cfg.get("moe_layer_freq") or 1,
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            rope_interleave=bool(cfg.get("rope_interleave", True)),
            rope_type=rope_type,
            max_position_embeddings=max_pos,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            model_type=model_type,
            **rope_kwargs,
        )
        if n_routed is not None:
            if n_routed % args.n_group:
                raise ConfigError(f"config.json: n_routed_experts {n_routed} is not divisible by n_group {args.n_group}")
            if args.topk_group > args.n_group:
                raise ConfigError(f"config.json: topk_group {args.topk_group} exceeds n_group {args.n_group}")
            if args.num_experts_per_tok > n_routed:
                raise ConfigError(f"config.json: num_experts_per_tok {args.num_experts_per_tok} exceeds n_routed_experts")
        if args.qk_rope_head_dim % 2:
            raise ConfigError(f"config.json: qk_rope_head_dim {args.qk_rope_head_dim} must be even")
        return args


# ----------------------------------------------------------------------------------------------
# Rotary embedding with YaRN


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_inv_freq(args: ModelArgs, device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dr/2] and the factor cos/sin are scaled by (1.0 without YaRN)."""
    dim, base = args.qk_rope_head_dim, args.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    inv_freq = 1.0 / pos_freqs
    if args.rope_type != "yarn":
        return inv_freq, 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(args.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(args.beta_fast)), 0)
    high: float = min(math.ceil(correction_dim(args.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 = high-frequency dims kept as trained, 0 = low-frequency dims interpolated
    inv_freq = inv_freq / args.rope_factor * (1 - keep) + inv_freq * keep
    if args.attention_factor is not None:
        attn_factor = float(args.attention_factor)
    else:
        attn_factor = yarn_mscale(args.rope_factor, args.mscale) / yarn_mscale(args.rope_factor, args.mscale_all_dim)
    return inv_freq, attn_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate x [..., T, h, dr] by per-token angles (cos, sin [T, dr/2]); computed in fp32.

    DeepSeek rotates interleaved pairs (x0, x1), (x2, x3)…; the older layout rotates halves.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, dr/2] broadcast over heads
    if interleave:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        half = xf.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # The same arithmetic, bit for bit (F.rms_norm's composite), in 5 ops instead of 8.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class AttentionBackend(Protocol):
    def __call__(
        self,
        layer: int,
        attn: MLA,
        q_nope: torch.Tensor,  # [B, T, nH, dn]
        q_pe: torch.Tensor,  # [B, T, nH, dr] (rotated)
        c_kv: torch.Tensor,  # [B, T, C] (normed latent)
        k_pe: torch.Tensor,  # [B, T, dr] (rotated)
    ) -> torch.Tensor: ...  # [B, T, nH, dv]


class MLA(nn.Module):
    """Multi-head latent attention. Keys and values live in a C-dim latent shared by all heads."""

    def __init__(self, args: ModelArgs, layer: int, tp: TensorParallel = SINGLE):
        super().__init__()
        self.layer = layer
        if args.num_attention_heads % tp.world:
            raise ConfigError(f"num_attention_heads {args.num_attention_heads} is not divisible by the "
                              f"tensor-parallel size {tp.world}")
        self.n_heads = args.num_attention_heads // tp.world  # this rank's heads
        self.dn, self.dr, self.dv = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.kv_lora_rank = args.kv_lora_rank
        self.rope_interleave = args.rope_interleave
        self.softmax_scale = args.softmax_scale
        H, nH, bias = args.hidden_size, args.num_attention_heads, args.attention_bias
        # Heads split over ranks: q and kv_b column-parallel (whole heads), o_proj row-parallel; the
        # latent projections (shared by all heads) are replicated, so every rank caches the latent.
        if args.q_lora_rank is None:
            self.q_proj = Linear(H, nH * args.qk_head_dim, tp=tp, split="column")
        else:
            self.q_a_proj = Linear(H, args.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(args.q_lora_rank, args.rms_norm_eps)
            self.q_b_proj = Linear(args.q_lora_rank, nH * args.qk_head_dim, tp=tp, split="column")
        self.kv_a_proj_with_mqa = Linear(H, args.latent_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(args.kv_lora_rank, args.rms_norm_eps)
        self.kv_b_proj = Linear(args.kv_lora_rank, nH * (self.dn + self.dv), tp=tp, split="column")
        self.o_proj = Linear(nH * self.dv, H, bias=bias, tp=tp, split="row")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        B, T, _ = x.shape  # x [B, T, H]; cos/sin [T, dr/2] (positions shared by the batch rows)
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
            kv = self.kv_a_proj_with_mqa(x)  # [B, T, C + dr]
        else:  # the two down-projections of x in one product on CPU (kernels/rows.py, linear_group)
            q_a, kv = fused(x, self.q_a_proj, self.kv_a_proj_with_mqa)
            q = self.q_b_proj(self.q_a_layernorm(q_a))
        q = q.view(B, T, self.n_heads, self.dn + self.dr)
        q_nope, q_pe = q.split([self.dn, self.dr], dim=-1)
        c_kv, k_pe = kv.split([self.kv_lora_rank, self.dr], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        # The rotary key rides along as one more head: one rotation for queries and key (element-wise,
        # so each value is what rotating it alone gives).
        pe = apply_rope(torch.cat((q_pe, k_pe.unsqueeze(-2)), dim=-2), cos, sin, self.rope_interleave)
        q_pe, k_pe = pe[..., :-1, :], pe[..., -1, :]  # [B, T, nH, dr], [B, T, dr]
        out = backend(self.layer, self, q_nope, q_pe, c_kv, k_pe)  # [B, T, nH, dv]
        y: torch.Tensor = self.o_proj(out.reshape(B, T, self.n_heads * self.dv))
        return y

    def absorbed_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [nH, dn, C] and W_UV [nH, dv, C] in `dtype`: kv_b_proj (dequantized when FP8) split per
        head, for attending against the latent itself (inference/attention.py)."""
        w = self.kv_b_proj.dense_weight(dtype)
        w = w.view(-1, self.dn + self.dv, w.shape[-1])
        return w[:, : self.dn], w[:, self.dn :]


class MLP(nn.Module):
    """down(silu(gate(x))·up(x)); under tensor parallelism gate/up column- and down row-parallel
    (reduce=False leaves down's partial sums for the caller to all-reduce with others)."""

    def __init__(self, dim: int, inter: int, tp: TensorParallel = SINGLE, reduce: bool = True):
        super().__init__()
        self.gate_proj = Linear(dim, inter, tp=tp, split="column")
        self.up_proj = Linear(dim, inter, tp=tp, split="column")
        self.down_proj = Linear(inter, dim, tp=tp, split="row", reduce=reduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = fused(x, self.gate_proj, self.up_proj)  # one product on CPU (column slices alike under TP)
        y: torch.Tensor = self.down_proj(F.silu(gate) * up)
        return y


def route(
    logits: torch.Tensor,  # [T, E] fp32 router logits
    bias: torch.Tensor | None,  # [E] e_score_correction_bias (noaux_tc only)
    *,
    k: int,
    n_group: int,
    topk_group: int,
    topk_method: str,
    scoring_func: str,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # weights [T, k] fp32, ids [T, k]
    """Choose k experts per token and their weights, following DeepSeek's reference rules.

    V3 (noaux_tc): choose on sigmoid score + bias; a group scores the sum of its top-2 biased scores;
    experts outside the best topk_group groups are masked to -inf (not 0.0: biased scores may be
    negative); weights are the *unbiased* scores. V2: softmax; greedy, or group_limited_greedy where a
    group scores its max.
    """
    T, E = logits.shape
    # The sigmoid in float64, rounded back: vectorised and scalar fp32 sigmoids round differently, and
    # which of a [T, E] tensor's elements take which depends on T (see Transformer.init_rope).
    scores = logits.double().sigmoid().float() if scoring_func == "sigmoid" else logits.softmax(dim=-1)
    choice = scores + bias if (topk_method == "noaux_tc" and bias is not None) else scores
    if topk_method in ("noaux_tc", "group_limited_greedy") and n_group > 1:
        grouped = choice.view(T, n_group, E // n_group)
        if topk_method == "noaux_tc":
            group_scores = grouped.topk(min(2, E // n_group), dim=-1).values.sum(dim=-1)  # [T, G]
        else:
            group_scores = grouped.amax(dim=-1)
        keep = group_scores.topk(topk_group, dim=-1).indices  # [T, topk_group]
        dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        choice = grouped.masked_fill(dropped[:, :, None], float("-inf")).view(T, E)
    ids = choice.topk(k, dim=-1).indices  # [T, k]
    weights = scores.gather(1, ids)
    if norm_topk_prob and k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids


class MoE(nn.Module):
    """Router, routed experts and shared experts. Under expert parallelism this rank holds the
    routed experts [expert_range) only (`expert_map`: global id → local index, -1 elsewhere); the
    router is replicated, the shared experts are tensor-parallel, and one all-reduce adds the
    ranks' routed and shared partial outputs. FP8 experts carry w13_scale_inv / w2_scale_inv
    (kernels/fp8.py's layout), set by the loader."""

    w13_scale_inv: nn.Parameter | None
    w2_scale_inv: nn.Parameter | None
    expert_map: torch.Tensor | None

    def __init__(self, args: ModelArgs, tp: TensorParallel = SINGLE):
        super().__init__()
        E, H, inter = args.n_routed_experts, args.hidden_size, args.moe_intermediate_size
        assert E is not None
        self.args = args
        self.tp = tp
        self.gate_weight = nn.Parameter(torch.empty(E, H))  # router [E, H]
        self.e_score_correction_bias: nn.Parameter | None
        if args.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.zeros(E, dtype=torch.float32))
        else:
            self.e_score_correction_bias = None
        self.expert_range = tp.bounds(E)
        lo, hi = self.expert_range
        self.w13 = nn.Parameter(torch.empty(hi - lo, 2 * inter, H))  # [E_local, 2I, H] stacked [gate; up]
        self.w2 = nn.Parameter(torch.empty(hi - lo, H, inter))  # [E_local, H, I] stacked down
        self.w13_scale_inv = None
        self.w2_scale_inv = None
        if tp.world > 1:
            emap = torch.full((E,), -1, dtype=torch.int32)
            emap[lo:hi] = torch.arange(hi - lo, dtype=torch.int32)
            self.register_buffer("expert_map", emap, persistent=False)
        else:
            self.expert_map = None
        shared = args.n_shared_experts or 0
        self.shared_experts = MLP(H, inter * shared, tp, reduce=False) if shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [T, H]
        a = self.args
        w = self.gate_weight
        xf = x if x.dtype == torch.float32 else x.float()
        logits = rows.linear(xf, w if w.dtype == torch.float32 else w.float())  # [T, E] routed in fp32
        weights, ids = route(
            logits,
            self.e_score_correction_bias,
            k=a.num_experts_per_tok,
            n_group=a.n_group,
            topk_group=a.topk_group,
            topk_method=a.topk_method,
            scoring_func=a.scoring_func,
            norm_topk_prob=a.norm_topk_prob,
            routed_scaling_factor=a.routed_scaling_factor,
        )
        y = routed_experts(x, self.w13, self.w2, weights, ids, w13_scale=self.w13_scale_inv,
                           w2_scale=self.w2_scale_inv, expert_map=self.expert_map)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return self.tp.all_reduce(y.contiguous()).view(shape)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, tp: TensorParallel = SINGLE):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = MLA(args, layer, tp)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp: nn.Module = (MoE(args, tp) if args.is_moe_layer(layer)
                               else MLP(args.hidden_size, args.intermediate_size, tp))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, backend)
        y: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return y


class MTPLayer(nn.Module):
    """DeepSeek-V3's multi-token-prediction layer (checkpoint index num_hidden_layers): predicts
    token t+2 from the main model's final normed hidden state at t and the embedding of token t+1.

        x = eh_proj([enorm(embed(t+1)); hnorm(h_t)])   (eh_proj [2H → H], the embedding first)
        x = a decoder block (MLA + MoE, its own weights) at position t, cache layer num_hidden_layers
        logits = lm_head(shared_head.norm(x))          (embedding and head: the main model's)
    """

    def __init__(self, args: ModelArgs, tp: TensorParallel = SINGLE):
        super().__init__()
        H = args.hidden_size
        self.layer = args.num_hidden_layers
        self.enorm = RMSNorm(H, args.rms_norm_eps)
        self.hnorm = RMSNorm(H, args.rms_norm_eps)
        self.eh_proj = Linear(2 * H, H)
        self.block = Block(args, self.layer, tp)
        self.norm = RMSNorm(H, args.rms_norm_eps)  # shared_head.norm

    def forward(self, embedded: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                backend: AttentionBackend) -> torch.Tensor:
        """embedded [B, T, H] (next tokens' embeddings), hidden [B, T, H] → normed output [B, T, H]."""
        x = self.eh_proj(torch.cat((self.enorm(embedded), self.hnorm(hidden)), dim=-1))
        out: torch.Tensor = self.norm(self.block(x, cos, sin, backend))
        return out


class Transformer(nn.Module):
    """The model. `tp` places this process in a tensor/expert-parallel group (inference/parallel.py):
    every rank builds the same Transformer with its own shard of the weights and runs the same
    forward; the collectives inside the layers make every rank's hidden states and logits equal."""

    mtp: MTPLayer | None

    def __init__(self, args: ModelArgs, tp: TensorParallel = SINGLE, mtp: bool = False):
        super().__init__()
        self.args = args
        self.tp = tp
        self.mtp = MTPLayer(args, tp) if mtp else None  # the draft layer, when loaded (load_model(mtp=True))
        self.embed_tokens = VocabEmbedding(args.vocab_size, args.hidden_size, tp=tp)
        self.layers = nn.ModuleList(Block(args, i, tp) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = Linear(args.hidden_size, args.vocab_size, tp=tp, split="column", gather=True)
        self.inv_freq: torch.Tensor | None = None  # set by init_rope once the device is known
        self.rope_scale = 1.0
        self._rope_table: torch.Tensor | None = None  # [positions, 2, dr/2] cos, sin (scaled), fp32

    def init_rope(self, device: torch.device | str, positions: int | None = None) -> None:
        """Build the rotary table on `device` for `positions` positions (default: at least
        max_position_embeddings). A step looks its positions up in it rather than computing cos and
        sin of just its own: CPU kernels round a vectorised cos differently from a scalar one, and
        which elements of a step's tensor land in the scalar tail depends on how many tokens the
        step has, so computed per step a token's rotation would depend on its batch mates."""
        self.inv_freq, self.rope_scale = rope_inv_freq(self.args, device)
        n = max(positions or 0, self.args.max_position_embeddings, 64)
        n = -(-n // 64) * 64  # whole vectors: no entry computed in a scalar tail (n × dr/2 a multiple of 32)
        angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        self._rope_table = torch.stack((angles.cos() * self.rope_scale, angles.sin() * self.rope_scale), dim=1)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, dr/2] (fp32) for integer positions [T] (below the table's length: see init_rope;
        the engine's max_model_len is covered when it builds)."""
        table = self._rope_table
        if table is None or table.device != positions.device:
            self.init_rope(positions.device)
            table = self._rope_table
        assert table is not None
        rows = table[positions]
        return rows[:, 0], rows[:, 1]

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        """input_ids [B, T], positions [T] → final-normed hidden states [B, T, H]."""
        cos, sin = self.rope(positions)
        x = self.embed_tokens(input_ids)
        for block in self.layers:
            x = block(x, cos, sin, backend)
        h: torch.Tensor = self.norm(x)
        return h

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] → logits [B, T, V]; each row is its own sequence starting at position 0."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        table = self._rope_table
        if table is None or table.device != input_ids.device or table.shape[0] < input_ids.shape[1]:
            self.init_rope(input_ids.device, input_ids.shape[1])
        logits: torch.Tensor = self.lm_head(self.hidden_states(input_ids, positions, CausalAttention()))
        return logits

    def mtp_hidden(self, next_ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                   backend: AttentionBackend) -> torch.Tensor:
        """The MTP layer at `positions`: next_ids [B, T] (token t+1 of each position t), hidden
        [B, T, H] (hidden_states' output at t) → [B, T, H]; lm_head of it predicts token t+2."""
        if self.mtp is None:
            raise RuntimeError("this model was loaded without its multi-token-prediction layer")
        cos, sin = self.rope(positions)
        out: torch.Tensor = self.mtp(self.embed_tokens(next_ids), hidden, cos, sin, backend)
        return out
