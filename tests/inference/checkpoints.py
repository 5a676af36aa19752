"""Tiny random DeepSeek checkpoints made by transformers (a test-only dependency), one per case."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# LEVEE_TEST_DEVICE=cuda runs the same tests on a GPU (fp32, same tolerances).
DEVICE = os.environ.get("LEVEE_TEST_DEVICE", "cpu")

COMMON = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    moe_intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    initializer_range=0.15,  # large enough that logits are far from uniform
    max_position_embeddings=512,
    bos_token_id=0,
    eos_token_id=1,
)

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 32,  # so prompts of 40+ tokens run past it
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 0.707,
    "mscale_all_dim": 0.707,
}

CASES: dict[str, dict] = {
    # V3: sigmoid + correction bias, group-limited top-k, q compression, YaRN, one dense layer.
    "v3_grouped_yarn": dict(
        family="v3", q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_parameters=YARN,
    ),
    # V3 without q compression, halves-layout rotary, two dense layers, no renormalisation.
    "v3_noq": dict(
        family="v3", q_lora_rank=None, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
        n_group=2, topk_group=1, first_k_dense_replace=2, norm_topk_prob=False, routed_scaling_factor=1.5,
        rope_interleave=False,
    ),
    # V2-Lite shape: softmax greedy, no q compression, no renormalisation.
    "v2_lite": dict(
        family="v2", q_lora_rank=None, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3,
        first_k_dense_replace=1, topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
    ),
    # V2 group_limited_greedy with q compression.
    "v2_grouped": dict(
        family="v2", q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=3,
        n_group=4, topk_group=2, first_k_dense_replace=1, topk_method="group_limited_greedy",
        norm_topk_prob=False, routed_scaling_factor=2.0,
    ),
    # Tensor/expert parallelism over 2 ranks: 5 experts split 2 + 3, 97 vocabulary rows 48 + 49.
    "v3_uneven": dict(
        family="v3", q_lora_rank=24, n_routed_experts=5, n_shared_experts=1, num_experts_per_tok=2,
        n_group=1, topk_group=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    ),
    # Batch invariance: v3_grouped_yarn and v2_grouped with MLP widths a multiple of 32 (as every
    # DeepSeek model's are), so no dense silu runs partly in a scalar tail (docs/inference.md).
    "v3_aligned": dict(
        family="v3", q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_parameters=YARN, intermediate_size=96, moe_intermediate_size=32,
    ),
    "v2_aligned": dict(
        family="v2", q_lora_rank=24, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=3,
        n_group=4, topk_group=2, first_k_dense_replace=1, topk_method="group_limited_greedy",
        norm_topk_prob=False, routed_scaling_factor=2.0, intermediate_size=96, moe_intermediate_size=32,
    ),
    # FP8 parity: every quantized linear has a dimension past one 128-block (partial edge blocks):
    # hidden 160, q_lora 136, kv_lora 144, expert width 136, dense width 200.
    "v3_fp8_edges": dict(
        family="v3", hidden_size=160, intermediate_size=200, moe_intermediate_size=136, q_lora_rank=136,
        kv_lora_rank=144, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
        topk_group=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        initializer_range=0.08,
    ),
}


def build(case: str, out: Path, *, max_shard_size: str | None = None, seed: int = 0):
    """Save case `case` under `out` and return the transformers model (fp32, eval mode)."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    spec = dict(CASES[case])
    family = spec.pop("family")
    kwargs = {**COMMON, **spec}
    torch.manual_seed(seed)
    if family == "v3":
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**kwargs))
        with torch.no_grad():  # a nonzero correction bias of both signs, so it changes choices
            for layer in model.model.layers:
                gate = getattr(layer.mlp, "gate", None)
                if gate is not None and hasattr(gate, "e_score_correction_bias"):
                    gate.e_score_correction_bias.copy_(torch.randn_like(gate.e_score_correction_bias) * 0.3)
    else:
        model = DeepseekV2ForCausalLM(DeepseekV2Config(**kwargs))
        for layer in model.model.layers:
            # transformers 5.12's group_limited_greedy path reads an attribute it never sets.
            if hasattr(layer.mlp, "experts"):
                layer.mlp.num_experts = kwargs["n_routed_experts"]
    model.eval()
    # generate() must run all 32 steps without stopping at (or suppressing) eos, like ignore_eos.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kwargs)
    return model


def rewrite_config(path: Path, **changes) -> None:
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    cfg_path.write_text(json.dumps(cfg))


_DELETE = object()
DELETE = _DELETE
