"""The engine at full size on one GPU: V2-Lite shapes, random bf16 weights built on the device.

    python3 ops/bench/engine_gpu.py            # ≈ 5-8 minutes on an H200; prints one table
    python3 ops/bench/engine_gpu.py --quick    # batch 1 and 8 only, 1k TTFT (a smoke run)

Rows: decode tokens/s at batch 1, 8, 64 and 256 with 1,024-token contexts, TTFT of one 1k and one
8k prompt, each beside its floor. A decode step's floor is max(bytes / copy bandwidth, FLOPs / bf16
matmul rate) with the bytes counted as every dense weight, the routed experts a batch of B tokens
touches on average (E · (1 − (1 − k/E)^B) per MoE layer) and the batch's latent cache; a prefill's
floor is its FLOPs (weights and causal attention) over the matmul rate. Bandwidth and matmul rate
are measured here first. Then the MoE kernel's one-token try: the default decode path against
`moe_gemv2_split`, and with the shared experts folded into the fused call as extra experts.

The GPU machine has no network: nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe import L2Flush, gpu_time_graph, measure_ceilings  # noqa: E402

from inference.engine import Engine, Request, SamplingParams  # noqa: E402
from inference.model import ModelArgs, Transformer  # noqa: E402

V2_LITE = dict(
    vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
    num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
    topk_method="greedy", scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0,
    first_k_dense_replace=1, rope_type="yarn", rope_factor=40.0, original_max_position_embeddings=4096,
    beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707, max_position_embeddings=163840,
    eos_token_ids=(100001,), model_type="deepseek_v2",
)


def build_model(device: torch.device, dtype: torch.dtype = torch.bfloat16, **shrink) -> Transformer:
    """V2-Lite's shapes (`shrink` overrides some: the CPU smoke test's tiny copy) with random weights."""
    args = ModelArgs(**{**V2_LITE, **shrink})  # type: ignore[arg-type]
    with torch.device(device):
        model = Transformer(args).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype != dtype or "norm" in name:
                p.fill_(1.0) if "norm" in name else p.zero_()
            else:
                p.normal_(0.0, 0.02)
    model.init_rope(device)
    return model.eval()


def param_bytes(model: Transformer) -> dict[str, float]:
    """Bytes of the weights a decode step reads besides the routed experts, and of one routed expert."""
    a = model.args
    routed = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".w13" in n or ".w2" in n)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()
    moe_layers = sum(a.is_moe_layer(i) for i in range(a.num_hidden_layers))
    assert a.n_routed_experts is not None
    return {"dense": total - routed - embed, "expert": routed / (moe_layers * a.n_routed_experts),
            "moe_layers": moe_layers, "active_params": (total - routed - embed) / 2
            + moe_layers * a.num_experts_per_tok * routed / (moe_layers * a.n_routed_experts) / 2}


def decode_floor(model: Transformer, pb: dict[str, float], batch: int, context: int, bw: float, flops: float) -> float:
    a = model.args
    E, k = a.n_routed_experts or 1, a.num_experts_per_tok
    touched = E * (1 - (1 - k / E) ** batch)
    kv = batch * context * a.num_hidden_layers * a.latent_dim * 2
    nbytes = pb["dense"] + pb["moe_layers"] * touched * pb["expert"] + kv
    attn = batch * a.num_hidden_layers * a.num_attention_heads * context * (a.latent_dim + a.kv_lora_rank) * 2
    return max(nbytes / bw, (2 * pb["active_params"] * batch + attn) / flops)


def prefill_floor(model: Transformer, pb: dict[str, float], tokens: int, flops: float) -> float:
    a = model.args
    attn = a.num_hidden_layers * a.num_attention_heads * tokens * tokens * (a.qk_head_dim + a.v_head_dim)  # causal: ½ of 2·T²
    return (2 * pb["active_params"] * tokens + attn) / flops


class Clock:
    """A sink that stamps every event (scheduler thread) with the time it was produced."""

    def __init__(self) -> None:
        self.q: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item: tuple) -> None:
        handle, event = item
        self.q.put((handle.request_id, time.perf_counter(), event))


def decode_rate(engine: Engine, vocab: int, batch: int, context: int, new_tokens: int) -> float:
    """Decode tokens/s of `batch` sequences, from the moment all have their first token to the end."""
    g = torch.Generator().manual_seed(batch)
    clock = Clock()
    for i in range(batch):
        prompt = torch.randint(3, vocab - 1, (context,), generator=g).tolist()
        engine.submit(Request(prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True),
                              request_id=f"r{i}"), sink=clock)
    first: dict[str, float] = {}
    stamps: list[tuple[float, int]] = []
    done = 0
    while done < batch:
        rid, t, ev = clock.q.get(timeout=600)
        first.setdefault(rid, t)
        stamps.append((t, len(ev.token_ids)))
        done += ev.finish_reason is not None
    # Tokens produced once every sequence was decoding, over the time they took.
    start = max(first.values())
    last = max(t for t, _ in stamps)
    counted = sum(n for t, n in stamps if t > start)
    return counted / (last - start) if last > start else float("nan")


def ttft(engine: Engine, vocab: int, tokens: int) -> float:
    g = torch.Generator().manual_seed(tokens)
    prompt = torch.randint(3, vocab - 1, (tokens,), generator=g).tolist()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    engine.submit(Request(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))).result(600)
    return time.perf_counter() - start


def moe_t1_try(model: Transformer, bw: float) -> list[tuple[str, float, float]]:
    """One token through one V2-Lite MoE layer's routed experts: µs and share of copy bandwidth."""
    from kernels.triton_moe import fused_moe_triton

    layer = next(b.mlp for b in model.layers if hasattr(b.mlp, "w13"))
    w13, w2 = layer.w13, layer.w2
    E, two_i, H = w13.shape
    k = model.args.num_experts_per_tok
    x = torch.randn(1, H, device=w13.device, dtype=w13.dtype)
    ids = torch.randperm(E, device=w13.device)[:k].view(1, k).to(torch.int32)
    weights = torch.rand(1, k, device=w13.device)
    flush = L2Flush(w13.device)
    nbytes = k * (w13[0].numel() + w2[0].numel()) * w13.element_size()
    rows = []
    for name, cfg in (("decode path (moe_gemv2)", None), ("moe_gemv2_split", {"gemv2_split": True})):
        s = gpu_time_graph(partial(fused_moe_triton, x, w13, w2, weights, ids, config=cfg, decode=True), flush, 50)
        rows.append((name, s * 1e6, nbytes / s / bw))
    # Shared experts folded in: the 2 shared experts (one MLP of 2·I) as 2 extra experts of I, weight 1.
    shared = layer.shared_experts
    assert shared is not None
    inter = two_i // 2
    n_shared = shared.gate_proj.weight.shape[0] // inter
    sg, su = shared.gate_proj.weight.view(n_shared, inter, H), shared.up_proj.weight.view(n_shared, inter, H)
    sd = shared.down_proj.weight.view(H, n_shared, inter).transpose(0, 1)
    w13_all = torch.cat([w13, torch.cat([sg, su], dim=1)]).contiguous()
    w2_all = torch.cat([w2, sd]).contiguous()
    ids_all = torch.cat([ids, torch.arange(E, E + n_shared, device=ids.device, dtype=ids.dtype).view(1, -1)], 1)
    w_all = torch.cat([weights, torch.ones(1, n_shared, device=weights.device)], 1)
    both = k + n_shared
    nbytes_all = both * (w13[0].numel() + w2[0].numel()) * w13.element_size()

    def separate() -> torch.Tensor:
        return fused_moe_triton(x, w13, w2, weights, ids, decode=True) + shared(x)

    for name, fn, nb in (("routed + shared MLP (two calls)", separate, nbytes_all),
                         ("shared folded in (one call)",
                          partial(fused_moe_triton, x, w13_all, w2_all, w_all, ids_all, decode=True), nbytes_all),
                         ("shared folded in, split",
                          partial(fused_moe_triton, x, w13_all, w2_all, w_all, ids_all, config={"gemv2_split": True},
                                  decode=True), nbytes_all)):
        s = gpu_time_graph(fn, flush, 50)
        rows.append((name, s * 1e6, nb / s / bw))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--no-graphs", action="store_true", help="run decode eagerly (to compare)")
    a = ap.parse_args()
    began = time.perf_counter()
    device = torch.device("cuda")
    bw, flops = measure_ceilings(device)
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s (read + write), bf16 matmul "
          f"{flops / 1e12:.0f} TFLOP/s", flush=True)
    model = build_model(device)
    pb = param_bytes(model)
    print(f"V2-Lite shapes, random bf16 weights: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} G "
          f"parameters, {pb['active_params'] / 1e9:.2f} G active per token ({time.perf_counter() - began:.0f} s)",
          flush=True)
    batches = (1, 8) if a.quick else (1, 8, 64, 256)
    context = 1024
    per_token = model.args.num_hidden_layers * model.args.latent_dim * 2
    budget = per_token * (max(batches) * (context + a.new_tokens) + 8192 + 4096)
    engine = Engine(model, kv_budget_bytes=budget, max_batch=max(batches), max_model_len=9216,
                    cuda_graphs=not a.no_graphs).start()
    rows = []
    try:
        decode_rate(engine, model.args.vocab_size, 1, 64, 8)  # warm-up: compiles, captures batch 1
        for b in batches:
            rate = decode_rate(engine, model.args.vocab_size, b, context, a.new_tokens)
            floor = decode_floor(model, pb, b, context + a.new_tokens // 2, bw, flops)
            rows.append((f"decode, batch {b}, 1k context", f"{rate:,.0f} tok/s",
                         f"{b / floor:,.0f} tok/s", f"{rate * floor / b:.0%}", f"{b / rate * 1e3:.2f} ms/step"))
            print(rows[-1], f"({time.perf_counter() - began:.0f} s)", flush=True)
        for t in (1024,) if a.quick else (1024, 8192):
            ttft(engine, model.args.vocab_size, 256)  # warm
            s = ttft(engine, model.args.vocab_size, t)
            floor = prefill_floor(model, pb, t, flops)
            rows.append((f"TTFT, {t // 1024}k prompt", f"{s * 1e3:.1f} ms", f"{floor * 1e3:.1f} ms",
                         f"{floor / s:.0%}", f"{s / floor:.2f}x floor"))
            print(rows[-1], f"({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        engine.stop()
    print("\n| run | measured | floor | of floor | note |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nMoE T=1, one V2-Lite layer: weight bytes read per second over the copy bandwidth "
          f"({bw / 1e12:.2f} TB/s, read + write), as ops/bench/moe.py reports it; target ≥ 55%:")
    print("| variant | µs | of copy bandwidth |\n| --- | --- | --- |")
    for name, us, share in moe_t1_try(model, bw):
        print(f"| {name} | {us:.1f} | {share:.0%} |")
    print(f"\ntotal {time.perf_counter() - began:.0f} s; engine steps {engine.steps}, "
          f"graph buckets captured {sorted(engine._graphs.graphs) if engine._graphs else 'off'}")


if __name__ == "__main__":
    main()
