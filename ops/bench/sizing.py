"""Memory sizing of a DeepSeek checkpoint served over N GPUs: weights per rank, latent cache, sequences.

    .venv/bin/python ops/bench/sizing.py --preset v3                  # DeepSeek-V3/R1 on 8 x H200
    .venv/bin/python ops/bench/sizing.py path/to/config.json --ranks 8 --gpu-gb 141 --seq 4096
    .venv/bin/python ops/bench/sizing.py --preset v2-lite --ranks 1 --bf16

Counts follow inference/model.py's shapes and the way inference/parallel.py splits them: MLA
heads (q_b / q_proj, kv_b, o_proj), dense and shared MLPs and the vocabulary (embedding, head)
divided by the ranks, routed experts partitioned, and the latent projections (q_a, kv_a), norms
and router replicated on every rank. FP8 (a checkpoint with quantization_config, or --fp8) is 1
byte per quantized weight plus a 4-byte scale per 128x128 block; everything else is bf16. Every
rank caches the full latent (num_hidden_layers x (kv_lora_rank + qk_rope_head_dim) x 2 bytes per
token). The multi-token-prediction layer (num_nextn_predict_layers) is counted as one more
decoder block plus eh_proj. A share of each GPU (--reserve, default 10%) is kept for activations,
the CUDA context and allocator slack.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "v3": dict(  # DeepSeek-V3 / R1 as published (config.json), FP8
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, first_k_dense_replace=3, moe_layer_freq=1, num_nextn_predict_layers=1,
        quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]},
    ),
    "v2-lite": dict(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1,
    ),
}


def _blocks(n: int, k: int) -> int:
    return math.ceil(n / 128) * math.ceil(k / 128)


class Tally:
    """Parameters and bytes on one rank, by kind (quantized linear or bf16 tensor)."""

    def __init__(self, fp8: bool) -> None:
        self.fp8 = fp8
        self.params = 0.0
        self.bytes = 0.0
        self.total_params = 0.0  # over all ranks

    def linear(self, n: int, k: int, share: float = 1.0) -> None:
        """An [n, k] quantizable weight of which this rank holds `share` (1 = replicated)."""
        self.total_params += n * k
        self.params += n * k * share
        self.bytes += (n * k + 4 * _blocks(n, k)) * share if self.fp8 else 2 * n * k * share

    def plain(self, count: int, share: float = 1.0) -> None:
        self.total_params += count
        self.params += count * share
        self.bytes += 2 * count * share


def size(cfg: dict[str, Any], ranks: int, fp8: bool | None = None) -> dict[str, float]:
    if fp8 is None:
        fp8 = bool(cfg.get("quantization_config"))
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    nH, dn, dr, dv = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                      cfg["v_head_dim"])
    C, Q = cfg["kv_lora_rank"], cfg.get("q_lora_rank")
    inter, moe_inter = cfg["intermediate_size"], cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    E, shared = cfg.get("n_routed_experts"), cfg.get("n_shared_experts") or 0
    L = cfg["num_hidden_layers"]
    mtp = cfg.get("num_nextn_predict_layers") or 0
    t = Tally(fp8)
    split = 1 / ranks

    def block(i: int) -> None:
        if Q is None:
            t.linear(nH * (dn + dr), H, split)
        else:
            t.linear(Q, H)
            t.plain(Q)
            t.linear(nH * (dn + dr), Q, split)
        t.linear(C + dr, H)
        t.plain(C)
        t.linear(nH * (dn + dv), C, split)
        t.linear(H, nH * dv, split)
        t.plain(2 * H)  # the two layer norms
        moe = E is not None and i >= (cfg.get("first_k_dense_replace") or 0) and i % (cfg.get("moe_layer_freq") or 1) == 0
        if moe:
            t.plain(E * H, 1.0)  # router
            if (cfg.get("topk_method") or ("noaux_tc" if cfg.get("model_type", "deepseek_v3") == "deepseek_v3"
                                           else "greedy")) == "noaux_tc":
                t.plain(E)  # e_score_correction_bias (fp32: counted as bf16, a few KB)
            per_rank = math.ceil(E / ranks) / E  # the fullest rank
            for _ in range(3):
                t.linear(moe_inter * E, H, per_rank)  # routed experts, whole experts per rank
            for _ in range(3):
                t.linear(moe_inter * shared, H, split) if shared else None
        else:
            for _ in range(3):
                t.linear(inter, H, split)

    for i in range(L):
        block(i)
    for _ in range(mtp):
        block(L)
        t.linear(H, 2 * H)  # eh_proj
        t.plain(3 * H)  # enorm, hnorm, shared_head.norm
    t.plain(2 * V * H, split)  # embedding and head, vocab-parallel
    t.plain(H)
    latent_per_token = L * (C + dr) * 2  # bytes, bf16, replicated on every rank
    return {"total_params": t.total_params, "rank_params": t.params, "rank_weight_bytes": t.bytes,
            "latent_bytes_per_token": latent_per_token, "fp8": float(fp8)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", help="a config.json (or a checkpoint directory)")
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--gpu-gb", type=float, default=141.0, help="memory per GPU, GB (H200: 141)")
    ap.add_argument("--reserve", type=float, default=0.10, help="share kept for activations and slack")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    ap.add_argument("--fp8", action="store_true", help="count the weights as FP8 even without quantization_config")
    ap.add_argument("--bf16", action="store_true", help="count the weights as bf16 even with quantization_config")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.preset:
        cfg = PRESETS[args.preset]
    elif args.config:
        path = Path(args.config)
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    else:
        ap.error("give a config.json or --preset")
    fp8 = True if args.fp8 else (False if args.bf16 else None)
    r = size(cfg, args.ranks, fp8)
    gb = 1e9
    usable = args.gpu_gb * gb * (1 - args.reserve)
    free = usable - r["rank_weight_bytes"]
    per_seq = r["latent_bytes_per_token"] * args.seq
    seqs = max(0, int(free // per_seq))
    r.update(usable_bytes=usable, cache_bytes=max(free, 0), sequences=seqs, seq_tokens=args.seq)
    kind = "FP8 (block-scaled)" if r["fp8"] else "bf16"
    print(f"{r['total_params'] / 1e9:.1f} B parameters, {kind} weights, {args.ranks} rank(s) of {args.gpu_gb:g} GB "
          f"({args.reserve:.0%} reserved)")
    print(f"  weights per rank        {r['rank_weight_bytes'] / gb:8.1f} GB ({r['rank_params'] / 1e9:.1f} B parameters)")
    print(f"  latent cache per token  {r['latent_bytes_per_token'] / 1024:8.1f} KiB per rank (every rank caches it)")
    if free <= 0:
        print(f"  does not fit: weights exceed the usable {usable / gb:.1f} GB per rank")
    else:
        print(f"  cache per rank          {free / gb:8.1f} GB = {free / r['latent_bytes_per_token'] / 1e6:.2f} M tokens")
        print(f"  {args.seq}-token sequences  {seqs:8d} at once")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    sys.exit(main())
