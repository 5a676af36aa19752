"""Benchmark of the fused MoE layer (kernels.fused_moe) against the reference loop.

    python ops/bench/moe.py --device cpu            # torch fast path vs the reference, E=64, k=6
    python ops/bench/moe.py --device cuda --out DIR # Triton kernels at DeepSeek layer shapes

On the CPU it times the torch fast path and the reference loop, calls taken round-robin so both see
the same background load, and reports the median and the best time of each, the speed-up of both,
the load average before and after, and the fast path's weight-streaming rate (best time) against a
copy bandwidth it measures. `--gemm matmul` times the fast path with torch.matmul instead of oneDNN
for the per-expert products, `--parallel gemm` with experts one after another (see docs/kernels.md). On a CUDA device, for the
V2-Lite and V3 routed-expert layer shapes at 1, 8, 64, 512 and 4096 tokens, it reports the time
of fused_moe (a CUDA graph replay after an L2 flush, and eager), achieved GB/s (bytes of the
experts' weights actually touched + activations in and out) against a device-to-device copy it
measures, achieved TFLOP/s against a bf16 matmul it measures, and the speed-up over the reference
loop and over the torch fast path run on the GPU.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels import fused_moe, moe_reference, moe_torch  # noqa: E402
from kernels.testing import random_problem, random_routing  # noqa: E402

SHAPES = {  # name: (H, I, E, k)
    "V2-Lite": (2048, 1408, 64, 6),
    "V3": (7168, 2048, 256, 8),
}
GPU_TOKENS = (1, 8, 64, 512, 4096)


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------


def cpu_times_interleaved(fns: dict, reps: int) -> dict[str, list[float]]:
    """Wall times in seconds of `reps` calls of each function, taken round-robin after one warm-up
    call each, so that every function sees the same background load on a shared machine."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def cpu_copy_bandwidth(nbytes: int = 1 << 28) -> float:
    """Bytes read + written per second by a large tensor copy (the best of 5)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    seconds = min(cpu_times_interleaved({"copy": partial(dst.copy_, src)}, reps=5)["copy"])
    return 2 * nbytes / seconds


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def run_cpu(args: argparse.Namespace) -> list[dict]:
    from kernels.torch_moe import GEMM_ENV, PARALLEL_ENV, PREPACK_ENV, gemm_for, parallel_for, prepack_for

    if args.gemm != "auto":
        os.environ[GEMM_ENV] = args.gemm
    if args.parallel != "auto":
        os.environ[PARALLEL_ENV] = args.parallel
    if args.prepack != "auto":
        os.environ[PREPACK_ENV] = "1" if args.prepack == "on" else "0"
    hidden, inter, experts, top_k = args.hidden, args.inter, args.experts, args.top_k
    dtype = getattr(torch, args.dtype)
    copy_bw = cpu_copy_bandwidth()
    gemm = gemm_for(torch.empty(0, dtype=dtype))
    if prepack_for(torch.empty(0, dtype=dtype)):
        gemm += " on prepacked weights"
    print(f"CPU: {torch.get_num_threads()} threads, load average {loadavg()}, copy bandwidth {copy_bw / 1e9:.1f} GB/s; "
          f"H={hidden} I={inter} E={experts} k={top_k} {args.dtype}; fast path GEMM: {gemm}")
    rows = []
    for tokens in args.tokens:
        problem = random_problem(tokens, hidden, inter, experts, top_k, dtype=dtype, seed=tokens)
        load_before = loadavg()
        times = cpu_times_interleaved({
            "fast": partial(moe_torch, *problem.args()),
            "reference": partial(moe_reference, *problem.args(), compute_dtype=None),
        }, reps=args.reps)
        load = loadavg()
        fast, ref = statistics.median(times["fast"]), statistics.median(times["reference"])
        fast_min, ref_min = min(times["fast"]), min(times["reference"])
        active = int(torch.unique(problem.topk_ids).numel())
        weight_bytes = active * 3 * hidden * inter * problem.w13.element_size()
        counts = torch.bincount(problem.topk_ids.reshape(-1).long(), minlength=experts).tolist()
        parallel = parallel_for(problem.hidden, counts)
        row = {"tokens": tokens, "threads": torch.get_num_threads(), "dtype": args.dtype, "gemm": gemm,
               "parallel": parallel,
               "load_average_before": load_before, "load_average": load,
               "fast_ms": fast * 1e3, "reference_ms": ref * 1e3, "speedup": ref / fast,
               "fast_min_ms": fast_min * 1e3, "reference_min_ms": ref_min * 1e3, "speedup_of_mins": ref_min / fast_min,
               "active_experts": active, "fast_weight_GBps": weight_bytes / fast_min / 1e9,
               "copy_GBps": copy_bw / 1e9}
        rows.append(row)
        print(f"T={tokens:5d}  median: fast {fast * 1e3:8.1f} ms  reference {ref * 1e3:8.1f} ms  speed-up {ref / fast:5.1f}x"
              f"  | best: fast {fast_min * 1e3:8.1f} ms  reference {ref_min * 1e3:8.1f} ms  speed-up {ref_min / fast_min:5.1f}x"
              f"  ({active} experts, {parallel} in parallel, best fast streams weights at {weight_bytes / fast_min / 1e9:.1f} GB/s; "
              f"load {load_before} -> {load})", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------


class L2Flush:
    """Overwrite a buffer larger than the L2 so each timed run starts with cold caches."""

    def __init__(self, device: torch.device, nbytes: int = 256 << 20):
        self.buf = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def gpu_time_eager(fn, flush: L2Flush, reps: int, warmup: int = 2) -> float:
    """Median seconds of fn between CUDA events, each run after an L2 flush."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) / 1e3


def gpu_time_graph(fn, flush: L2Flush, reps: int) -> float:
    """Median seconds of one CUDA-graph replay of fn, each after an L2 flush (no launch gaps)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return gpu_time_eager(graph.replay, flush, reps, warmup=2)


def measure_ceilings(device: torch.device) -> tuple[float, float]:
    """(copy bytes/s counting read + write, bf16 matmul FLOP/s) measured here and now."""
    import triton.testing

    n = 1 << 30  # 4 GiB of fp32 each way
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    copy_s = triton.testing.do_bench(partial(dst.copy_, src), warmup=50, rep=300, return_mode="median") / 1e3
    del src, dst
    m = 8192
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    mm_s = triton.testing.do_bench(partial(torch.matmul, a, b), warmup=50, rep=300, return_mode="median") / 1e3
    return 2 * n * 4 / copy_s, 2 * m**3 / mm_s


def run_cuda(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda")
    dtype = torch.bfloat16
    copy_bw, mm_flops = measure_ceilings(device)
    name = torch.cuda.get_device_name(device)
    print(f"{name}: copy {copy_bw / 1e12:.2f} TB/s (read + write), bf16 matmul {mm_flops / 1e12:.0f} TFLOP/s")
    flush = L2Flush(device)
    rows = []
    for shape in args.shapes:
        hidden, inter, experts, top_k = SHAPES[shape]
        base = random_problem(1, hidden, inter, experts, top_k, dtype=dtype, device=device, seed=0)
        w13, w2 = base.w13, base.w2
        del base
        expert_bytes = 3 * hidden * inter * w13.element_size()
        for tokens in args.tokens:
            gen = torch.Generator().manual_seed(tokens)
            ids, weights = random_routing(tokens, experts, top_k, generator=gen, device=device)
            x = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=dtype)
            call = (x, w13, w2, weights, ids)
            out = fused_moe(*call)
            ref = moe_reference(*call) if tokens <= 512 or experts <= 64 else None  # fp32 check
            if ref is not None:
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            else:
                err = float("nan")
            graph_s = gpu_time_graph(partial(fused_moe, *call), flush, reps=args.reps)
            eager_s = gpu_time_eager(partial(fused_moe, *call), flush, reps=args.reps)
            ref_s = gpu_time_eager(partial(moe_reference, *call, compute_dtype=None), flush,
                                   reps=3, warmup=1)
            torch_s = gpu_time_eager(partial(moe_torch, *call), flush, reps=3, warmup=1)
            active = int(torch.unique(ids).numel())
            nbytes = active * expert_bytes + 2 * tokens * hidden * x.element_size()
            flops = 6 * tokens * top_k * hidden * inter
            row = {
                "shape": shape, "tokens": tokens, "H": hidden, "I": inter, "E": experts, "k": top_k,
                "active_experts": active, "graph_us": graph_s * 1e6, "eager_us": eager_s * 1e6,
                "GBps": nbytes / graph_s / 1e9, "bw_frac": nbytes / graph_s / copy_bw,
                "TFLOPs": flops / graph_s / 1e12, "mm_frac": flops / graph_s / mm_flops,
                "reference_us": ref_s * 1e6, "speedup_vs_reference": ref_s / graph_s,
                "torch_path_us": torch_s * 1e6, "speedup_vs_torch_path": torch_s / graph_s,
                "rel_err_vs_fp32_reference": err,
            }
            rows.append(row)
            print(f"{shape:8s} T={tokens:5d} {graph_s * 1e6:9.1f} us (eager {eager_s * 1e6:9.1f})  "
                  f"{row['GBps']:7.0f} GB/s = {row['bw_frac']:5.1%} of copy  {row['TFLOPs']:6.1f} TFLOP/s = "
                  f"{row['mm_frac']:5.1%} of matmul  x{row['speedup_vs_reference']:.0f} vs reference, "
                  f"x{row['speedup_vs_torch_path']:.1f} vs torch path  err {err:.2e}", flush=True)
            del call, x, ids, weights, out, ref
        del w13, w2
        torch.cuda.empty_cache()
    header = {"device": name, "copy_TBps": copy_bw / 1e12, "matmul_TFLOPs": mm_flops / 1e12}
    for row in rows:
        row.update(header)
    return rows


def run_breakdown(args: argparse.Namespace) -> list[dict]:
    """Per-stage graph times (align, GEMM 1, GEMM 2, sum) with the launcher's own configs."""
    from kernels.configs import fit_shared_memory, gemm_configs, get_config
    from kernels.triton_moe import moe_align, moe_gemm1, moe_gemm2, moe_sum

    device = torch.device("cuda")
    dtype = torch.bfloat16
    flush = L2Flush(device)
    name = torch.cuda.get_device_name(device)
    rows = []
    for shape in args.shapes:
        hidden, inter, experts, top_k = SHAPES[shape]
        base = random_problem(1, hidden, inter, experts, top_k, dtype=dtype, device=device, seed=0)
        w13, w2 = base.w13, base.w2
        for tokens in args.breakdown_tokens:
            gen = torch.Generator().manual_seed(tokens)
            ids, weights = random_routing(tokens, experts, top_k, generator=gen, device=device)
            x = torch.randn(tokens, hidden, generator=gen).to(device=device, dtype=dtype)
            config = get_config(tokens, experts, inter, top_k, name)
            cfg1, cfg2 = gemm_configs(config)
            cfg1, cfg2 = fit_shared_memory(cfg1, 2, 2), fit_shared_memory(cfg2, 2, 1)
            aligned = moe_align(ids, experts, cfg1["BLOCK_M"])
            act = moe_gemm1(x, w13, *aligned, top_k, cfg1)
            per_pair = moe_gemm2(act, w2, weights, *aligned, cfg2)
            out = torch.empty_like(x)
            stages = {
                "align": partial(moe_align, ids, experts, cfg1["BLOCK_M"]),
                "gemm1": partial(moe_gemm1, x, w13, *aligned, top_k, cfg1),
                "gemm2": partial(moe_gemm2, act, w2, weights, *aligned, cfg2, out=per_pair),
                "sum": partial(moe_sum, per_pair, top_k, out),
            }
            from kernels.triton_moe import fused_moe_triton

            stages["whole_aligned"] = partial(fused_moe_triton, x, w13, w2, weights, ids, decode=False)
            stages["whole_decode_path"] = partial(fused_moe_triton, x, w13, w2, weights, ids, decode=True)
            # GEMM 2 split over the k experts (off by default; see kernels.triton_moe.moe_decode)
            stages["whole_decode_split"] = partial(fused_moe_triton, x, w13, w2, weights, ids, decode=True,
                                                   config={**config, "gemv2_split": True})
            row = {"shape": shape, "tokens": tokens, "num_m_blocks": aligned[1].numel()}
            for stage, fn in stages.items():
                row[f"{stage}_us"] = gpu_time_graph(fn, flush, reps=args.reps) * 1e6
            rows.append(row)
            print("breakdown " + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items()), flush=True)
        del w13, w2, base
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        f"{rows[0]['device']}: measured copy {rows[0]['copy_TBps']:.2f} TB/s (read + write), "
        f"bf16 matmul {rows[0]['matmul_TFLOPs']:.0f} TFLOP/s.",
        "",
        "| layer | T | experts touched | time (graph) µs | eager µs | GB/s | % of copy | TFLOP/s | % of matmul "
        "| × reference | × torch path | rel. err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['tokens']} | {r['active_experts']} | {r['graph_us']:.1f} | {r['eager_us']:.1f} "
            f"| {r['GBps']:.0f} | {r['bw_frac']:.0%} | {r['TFLOPs']:.1f} | {r['mm_frac']:.0%} "
            f"| {r['speedup_vs_reference']:.0f} | {r['speedup_vs_torch_path']:.1f} | {r['rel_err_vs_fp32_reference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, nargs="+")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, help="directory for moe_<device>.json (and .md on CUDA)")
    cpu = parser.add_argument_group("cpu")
    cpu.add_argument("--hidden", type=int, default=2048)
    cpu.add_argument("--inter", type=int, default=1408)
    cpu.add_argument("--experts", type=int, default=64)
    cpu.add_argument("--top-k", type=int, default=6)
    cpu.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    cpu.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    cpu.add_argument("--gemm", default="auto", choices=["auto", "onednn", "matmul"],
                     help="the fast path's per-expert GEMM (sets $LEVEE_MOE_CPU_GEMM; auto: its own choice)")
    cpu.add_argument("--parallel", default="auto", choices=["auto", "experts", "gemm"],
                     help="experts on a pool of one-thread workers, or one after another with threaded "
                          "GEMMs (sets $LEVEE_MOE_CPU_PARALLEL; auto: the fast path's own choice)")
    cpu.add_argument("--prepack", default="auto", choices=["auto", "on", "off"],
                     help="oneDNN products on weights packed once and cached (sets $LEVEE_MOE_CPU_PREPACK; "
                          "auto: the fast path's own choice; the warm-up call packs)")
    gpu = parser.add_argument_group("cuda")
    gpu.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    gpu.add_argument("--breakdown-tokens", type=int, nargs="*", default=[],
                     help="instead of the table, time each stage alone at these token counts")
    args = parser.parse_args()

    if args.device == "cpu":
        if args.threads:
            torch.set_num_threads(args.threads)
        args.tokens = args.tokens or [1, 64, 512]
        args.reps = args.reps or 5
        rows = run_cpu(args)
    elif args.breakdown_tokens:
        args.reps = args.reps or 20
        rows = run_breakdown(args)
        args.device = "cuda_breakdown"
    else:
        args.tokens = args.tokens or list(GPU_TOKENS)
        args.reps = args.reps or 20
        rows = run_cuda(args)
        print()
        print(markdown(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"moe_{args.device}.json").write_text(json.dumps(rows, indent=2))
        if args.device == "cuda":
            (args.out / "moe_cuda.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
