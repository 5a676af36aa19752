"""FP8 on a GPU: the block-scaled fused MoE kernels and the dense FP8 GEMM against bf16 (prepared;
not yet run on a GPU).

    python3 ops/bench/fp8_moe_gpu.py --json OUT.json      # V2-Lite and V3 shapes, 1 / 8 / 64 / 512 / 4096 tokens

For each routed-expert layer shape and token count: the bf16 fused_moe on the dequantized weights
and the FP8 fused_moe (weights float8_e4m3fn + 128x128 scales, W8A16) on the same problem; their
difference relative to the fp32 reference on the dequantized weights (numerics: both should sit
at bf16 rounding); CUDA-graph times after an L2 flush; achieved GB/s counting each format's own
weight bytes (FP8: 1 byte + scales; bf16: 2 bytes) against a measured copy bandwidth; the FP8/bf16
time ratio (at decode, reading half the bytes should approach 0.5x). Then the dense block-FP8 GEMM
(kernels/fp8_linear.py) against torch's bf16 matmul at V3's q_b_proj / o_proj / dense MLP shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels import fused_moe, moe_reference  # noqa: E402
from kernels.fp8 import dequantize, dequantize_w13, quantize  # noqa: E402
from kernels.testing import random_routing  # noqa: E402
from ops.bench.moe import SHAPES, L2Flush, gpu_time_graph, measure_ceilings  # noqa: E402


def quantized_experts(experts: int, hidden: int, inter: int, device: torch.device, seed: int = 0):
    """FP8 w13/w2 with scales, made expert by expert on the device (V3's 22 GB of bf16 never exists at once)."""
    g = torch.Generator(device=device).manual_seed(seed)
    w13 = torch.empty(experts, 2 * inter, hidden, dtype=torch.float8_e4m3fn, device=device)
    w2 = torch.empty(experts, hidden, inter, dtype=torch.float8_e4m3fn, device=device)
    s13 = torch.empty(experts, 2 * -(-inter // 128), -(-hidden // 128), device=device)
    s2 = torch.empty(experts, -(-hidden // 128), -(-inter // 128), device=device)
    nb = -(-inter // 128)
    for e in range(experts):
        gate = torch.randn(inter, hidden, generator=g, device=device) * hidden**-0.5
        up = torch.randn(inter, hidden, generator=g, device=device) * hidden**-0.5
        down = torch.randn(hidden, inter, generator=g, device=device) * inter**-0.5
        (w13[e, :inter], s13[e, :nb]), (w13[e, inter:], s13[e, nb:]) = quantize(gate), quantize(up)
        w2[e], s2[e] = quantize(down)
    return w13, s13, w2, s2


def rel_err(out: torch.Tensor, ref: torch.Tensor | None) -> float:
    return float("nan") if ref is None else ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def run_moe(args: argparse.Namespace, copy_bw: float, flush: L2Flush) -> list[dict]:
    device = torch.device("cuda")
    rows = []
    for shape in args.shapes:
        hidden, inter, experts, top_k = SHAPES[shape]
        q13, s13, q2, s2 = quantized_experts(experts, hidden, inter, device)
        w13 = dequantize_w13(q13, s13, torch.bfloat16)
        w2 = dequantize(q2, s2, torch.bfloat16)
        for tokens in args.tokens:
            gen = torch.Generator().manual_seed(tokens)
            ids, weights = random_routing(tokens, experts, top_k, generator=gen, device=device)
            x = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=torch.bfloat16)
            bf16 = partial(fused_moe, x, w13, w2, weights, ids)
            fp8 = partial(fused_moe, x, q13, q2, weights, ids, w13_scale=s13, w2_scale=s2)
            out_b, out_f = bf16(), fp8()
            ref = moe_reference(x, w13, w2, weights, ids) if tokens <= 512 or experts <= 64 else None
            t_b = gpu_time_graph(bf16, flush, reps=args.reps)
            t_f = gpu_time_graph(fp8, flush, reps=args.reps)
            active = int(torch.unique(ids).numel())
            act_bytes = 2 * tokens * hidden * 2
            bytes_b = active * 3 * hidden * inter * 2 + act_bytes
            bytes_f = active * (3 * hidden * inter + 4 * (s13[0].numel() + s2[0].numel())) + act_bytes
            row = {"shape": shape, "tokens": tokens, "bf16_us": t_b * 1e6, "fp8_us": t_f * 1e6,
                   "fp8_over_bf16": t_f / t_b, "bf16_GBps": bytes_b / t_b / 1e9, "fp8_GBps": bytes_f / t_f / 1e9,
                   "fp8_bw_frac": bytes_f / t_f / copy_bw, "bf16_rel_err": rel_err(out_b, ref), "fp8_rel_err": rel_err(out_f, ref),
                   "fp8_vs_bf16_rel_diff": ((out_f.float() - out_b.float()).norm() / out_b.float().norm()).item()}
            rows.append(row)
            print(f"{shape:8s} T={tokens:5d} bf16 {t_b * 1e6:8.1f} us  fp8 {t_f * 1e6:8.1f} us "
                  f"(x{row['fp8_over_bf16']:.2f})  fp8 {row['fp8_GBps']:6.0f} GB/s = {row['fp8_bw_frac']:5.1%} of copy  "
                  f"err bf16 {row['bf16_rel_err']:.2e} fp8 {row['fp8_rel_err']:.2e}", flush=True)
        del q13, s13, q2, s2, w13, w2
        torch.cuda.empty_cache()
    return rows


def run_dense(args: argparse.Namespace, flush: L2Flush) -> list[dict]:
    from kernels.fp8_linear import fp8_linear_triton

    device = torch.device("cuda")
    rows = []
    for name, (n, k) in {"q_b_proj/8": (3072, 1536), "o_proj/8": (7168, 2048), "dense_up/8": (2304, 7168)}.items():
        q, s = quantize(torch.randn(n, k, device=device) * k**-0.5)
        w = dequantize(q, s, torch.bfloat16)
        for m in (1, 64, 4096):
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            out_f, out_b = fp8_linear_triton(x, q, s), x @ w.t()
            diff = ((out_f.float() - out_b.float()).norm() / out_b.float().norm()).item()
            t_b = gpu_time_graph(partial(torch.matmul, x, w.t()), flush, reps=args.reps)
            t_f = gpu_time_graph(partial(fp8_linear_triton, x, q, s), flush, reps=args.reps)
            rows.append({"linear": name, "M": m, "N": n, "K": k, "bf16_us": t_b * 1e6, "fp8_us": t_f * 1e6,
                         "fp8_over_bf16": t_f / t_b, "rel_diff": diff})
            print(f"{name:11s} M={m:5d} bf16 matmul {t_b * 1e6:8.1f} us  fp8 GEMM {t_f * 1e6:8.1f} us "
                  f"(x{t_f / t_b:.2f})  rel diff {diff:.2e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 8, 64, 512, 4096])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device("cuda")
    copy_bw, _ = measure_ceilings(device)
    print(f"{torch.cuda.get_device_name(device)}: copy {copy_bw / 1e12:.2f} TB/s")
    flush = L2Flush(device)
    result = {"device": torch.cuda.get_device_name(device), "copy_TBps": copy_bw / 1e12,
              "moe": run_moe(args, copy_bw, flush), "dense": run_dense(args, flush)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
