"""The checkpoint the end-to-end tests serve: the demo tokenizer with small random weights.

Random weights rarely pick the end-of-sequence token, so a request runs to its max_tokens: what the
cancel and kill tests need. (The trained demo model answers in a sentence and stops.)"""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "inference" / "demo" / "checkpoint"


def e2e_checkpoint(out: Path) -> Path:
    import json

    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    demo = json.loads((DEMO / "config.json").read_text())
    config = DeepseekV3Config(
        vocab_size=demo["vocab_size"], hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4,
        n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
        q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=4096, bos_token_id=demo.get("bos_token_id"), eos_token_id=demo.get("eos_token_id"),
        tie_word_embeddings=False, rope_interleave=True)
    torch.manual_seed(1234)
    model = DeepseekV3ForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, out / name)
    return out
