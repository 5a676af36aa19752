"""FP8 weights on CPU: memory per parameter and decode speed, bf16 against FP8 in one run.

    .venv/bin/python ops/bench/fp8.py                 # builds the random bench model (ops/bench/inference.py)
    .venv/bin/python ops/bench/fp8.py --checkpoint DIR --json out.json

The bf16 checkpoint is block-quantized by `inference.quantize`; both load with bf16 compute. Memory
is the bytes of every parameter and buffer the model holds, per parameter of the bf16 model, plus
what the dequantization cache holds after generating (kernels/fp8.py, $LEVEE_FP8_CACHE_MB), for a
cache of 0 (dequantize every weight on every call) and of the default budget. Speed is greedy
decode through the engine (tokens/s, prefill included), the same prompts for every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference import load_model  # noqa: E402
from inference.engine import Engine, Request, SamplingParams  # noqa: E402
from inference.quantize import quantize_checkpoint  # noqa: E402
from kernels.fp8 import CACHE  # noqa: E402


def model_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total


def decode(model: torch.nn.Module, prompts: list[list[int]], tokens: int) -> float:
    engine = Engine(model, kv_budget_bytes=64 << 20, max_batch=len(prompts)).start()
    try:
        start = time.perf_counter()
        handles = [engine.submit(Request(p, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)))
                   for p in prompts]
        for h in handles:
            h.result(timeout=600)
        return len(prompts) * tokens / (time.perf_counter() - start)
    finally:
        engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="a bf16/fp32 checkpoint (default: the random bench model)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "bf16"
        if not args.checkpoint:
            from ops.bench.inference import build_checkpoint

            build_checkpoint(src)
        fp8_dir = Path(tmp) / "fp8"
        quantized = quantize_checkpoint(src, fp8_dir)
        g = torch.Generator().manual_seed(0)
        bf16 = load_model(src, dtype=torch.bfloat16, device="cpu")
        vocab = bf16.args.vocab_size
        prompts = [torch.randint(2, vocab, (32,), generator=g).tolist() for _ in range(args.prompts)]
        params = sum(p.numel() for p in bf16.parameters())
        results: dict[str, dict[str, float]] = {}
        results["bf16"] = {"bytes_per_param": model_bytes(bf16) / params,
                           "tokens_per_s": decode(bf16, prompts, args.tokens)}
        del bf16
        for label, budget in (("fp8 cache 0", "0"), ("fp8 cache default", "")):
            os.environ["LEVEE_FP8_CACHE_MB"] = budget
            CACHE.clear()
            model = load_model(fp8_dir, dtype=torch.bfloat16, device="cpu")
            held = model_bytes(model)
            q_bytes = q_params = 0
            for module in model.modules():
                for wname, sname in (("weight", "weight_scale_inv"), ("w13", "w13_scale_inv"), ("w2", "w2_scale_inv")):
                    scale = getattr(module, sname, None)
                    if scale is not None:
                        w = getattr(module, wname)
                        q_bytes += w.nbytes + scale.nbytes
                        q_params += w.numel()
            tps = decode(model, prompts, args.tokens)
            results[label] = {"bytes_per_param": held / params, "cache_bytes_per_param": CACHE.bytes / params,
                              "quantized_bytes_per_param": q_bytes / q_params,
                              "quantized_share": q_params / params, "tokens_per_s": tps}
            del model
        os.environ.pop("LEVEE_FP8_CACHE_MB", None)
    print(f"{params / 1e6:.1f} M parameters, {quantized} weights quantized; {args.prompts} prompts x "
          f"{args.tokens} tokens, {args.threads} thread(s)")
    for label, r in results.items():
        cache = (f" (quantized linears {r['quantized_bytes_per_param']:.4f} B/param, "
                 f"{r['quantized_share']:.0%} of parameters), cache {r['cache_bytes_per_param']:.2f} B/param"
                 if "cache_bytes_per_param" in r else "")
        print(f"  {label:18s} {r['bytes_per_param']:.3f} B/param{cache}, {r['tokens_per_s']:.1f} tokens/s "
              f"({r['tokens_per_s'] / results['bf16']['tokens_per_s']:.2f}x bf16)")
    if args.json:
        Path(args.json).write_text(json.dumps({"params": params, "results": results}, indent=2))


if __name__ == "__main__":
    main()
