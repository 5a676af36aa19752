"""Tune the Triton MoE tile configs on the GPU at hand and write the table the launcher reads.

    python -m kernels.tune --shapes V2-Lite V3 --tokens 1 8 64 512 4096
    python -m kernels.tune --experts 64 --hidden 2048 --inter 1408 --top-k 6
    python -m kernels.tune ... --bundle tuned.json   # also one file holding every table
    python -m kernels.tune --unbundle tuned.json     # split a bundle into kernels/configs/

For each layer shape and token count it times GEMM 1 and GEMM 2 separately (triton.testing.do_bench,
L2 flushed, median) over a pruned candidate list per BLOCK_M, keeps the best of each for every
BLOCK_M tried, and picks the BLOCK_M whose align + GEMM 1 + GEMM 2 is fastest. The winner goes to
`E={E},N={I},device_name={GPU}.json` (kernels/configs/ unless --out-dir), keyed by token count;
GEMM 2's settings go under "gemm2" when they differ. A wall-clock budget bounds the whole run: once
it is spent, remaining token counts keep the default config.

Legend: T tokens, H hidden, I expert intermediate size, E experts, k experts per token.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from kernels.configs import (
    CONFIG_DIR,
    CONFIG_KEYS,
    Config,
    config_file_name,
    default_config,
    fit_shared_memory,
)

SHAPES = {  # name: (H, I, E, k)
    "V2-Lite": (2048, 1408, 64, 6),
    "V3": (7168, 2048, 256, 8),
}

# (BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M) per BLOCK_M; the default comes first.
CANDIDATES: dict[int, list[tuple[int, int, int, int, int]]] = {
    16: [(64, 128, 4, 4, 1), (32, 128, 4, 4, 1), (64, 256, 4, 3, 1), (128, 128, 4, 3, 1), (32, 256, 4, 4, 1),
         (64, 64, 4, 5, 1), (32, 128, 4, 6, 1), (16, 256, 4, 4, 1), (32, 128, 2, 5, 1)],
    32: [(64, 128, 4, 4, 8), (128, 64, 4, 4, 8), (64, 256, 4, 3, 8), (128, 128, 8, 3, 8)],
    64: [(128, 64, 4, 4, 8), (64, 128, 4, 4, 8), (128, 128, 8, 3, 8), (256, 64, 8, 3, 8)],
    128: [(128, 64, 8, 3, 8), (128, 128, 8, 3, 8), (256, 64, 8, 3, 8), (128, 64, 4, 4, 8), (64, 64, 4, 4, 8)],
}


def candidate_block_ms(num_tokens: int, num_experts: int, top_k: int) -> list[int]:
    """The default BLOCK_M and, where experts get many rows, the next one up as well."""
    first = default_config(num_tokens, num_experts, top_k)["BLOCK_M"]
    if num_tokens * top_k / num_experts > 8 and first < 128:
        return [first, first * 2]
    return [first]


def _config(block_m: int, cand: tuple[int, int, int, int, int]) -> Config:
    block_n, block_k, warps, stages, group_m = cand
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m,
            "num_warps": warps, "num_stages": stages}


def tune_shape(hidden: int, inter: int, num_experts: int, top_k: int, tokens: list[int], *,
               deadline: float, dtype: torch.dtype = torch.bfloat16, log: Callable[[str], object] = print,
               device: str | torch.device = "cuda",
               bench: Callable[[Callable[[], object]], float] | None = None) -> dict[int, Config]:
    """{token count: best config} for one layer shape; `bench(fn) -> ms` defaults to do_bench."""
    from kernels.testing import random_problem, random_routing
    from kernels.triton_moe import moe_align, moe_gemm1, moe_gemm2

    if bench is None:
        import triton.testing

        def bench(fn: Callable[[], object]) -> float:
            ms: float = triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")
            return ms

    device_is_cuda = torch.device(device).type == "cuda"
    smem = 0
    if device_is_cuda:
        from kernels.triton_moe import _max_shared_memory

        smem = _max_shared_memory(torch.device(device).index)
    weights = random_problem(1, hidden, inter, num_experts, top_k, dtype=dtype, device=device)
    w13, w2 = weights.w13, weights.w2

    table: dict[int, Config] = {}
    for num_tokens in tokens:
        gen = torch.Generator().manual_seed(num_tokens)
        ids, topk_weights = random_routing(num_tokens, num_experts, top_k, generator=gen, device=device)
        x = torch.randn(num_tokens, hidden, generator=gen).to(device=device, dtype=dtype)
        best_total, best_cfg = float("inf"), None
        default_ms = None
        for block_m in [bm for bm in candidate_block_ms(num_tokens, num_experts, top_k) if bm in CANDIDATES]:
            sorted_ids, expert_ids, num_post_pad = moe_align(ids, num_experts, block_m)
            align_ms = bench(partial(moe_align, ids, num_experts, block_m))
            first = _config(block_m, CANDIDATES[block_m][0])
            act = moe_gemm1(x, w13, sorted_ids, expert_ids, num_post_pad, top_k, first)
            best1: tuple[float, Config | None] = (float("inf"), None)
            best2: tuple[float, Config | None] = (float("inf"), None)
            for cand in CANDIDATES[block_m]:
                if time.monotonic() > deadline:
                    break
                cfg = _config(block_m, cand)
                if device_is_cuda and (fit_shared_memory(cfg, x.element_size(), 2, smem) != cfg
                                       or fit_shared_memory(cfg, x.element_size(), 1, smem) != cfg):
                    log(f"  skip {cfg}: needs more shared memory than the {smem} B a block may have")
                    continue
                try:
                    t1 = bench(partial(moe_gemm1, x, w13, sorted_ids, expert_ids, num_post_pad, top_k, cfg))
                    t2 = bench(partial(moe_gemm2, act, w2, topk_weights, sorted_ids, expert_ids, num_post_pad, cfg))
                except Exception as exc:  # noqa: BLE001 - a config the chip cannot run (shared memory) is skipped
                    log(f"  skip {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    continue
                if cfg == default_config(num_tokens, num_experts, top_k):
                    default_ms = align_ms + t1 + t2
                best1 = min(best1, (t1, cfg), key=lambda pair: pair[0])
                best2 = min(best2, (t2, cfg), key=lambda pair: pair[0])
            if best1[1] is None or best2[1] is None:
                continue
            total = align_ms + best1[0] + best2[0]
            if total < best_total:
                cfg = dict(best1[1])
                if best2[1] != best1[1]:
                    cfg["gemm2"] = {k: v for k, v in best2[1].items() if k != "BLOCK_M"}
                best_total, best_cfg = total, cfg
        if best_cfg is None:
            log(f"T={num_tokens}: out of time budget, keeping the default")
            continue
        table[num_tokens] = best_cfg
        default_us = default_ms * 1e3 if default_ms is not None else float("nan")
        log(f"T={num_tokens}: {best_total * 1e3:.1f} us tuned, {default_us:.1f} us default, {json.dumps(best_cfg)}")
    return table


def write_table(table: dict[int, Config], num_experts: int, inter: int, device_name: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / config_file_name(num_experts, inter, device_name)
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.update({str(t): cfg for t, cfg in table.items()})
    ordered = dict(sorted(existing.items(), key=lambda item: int(item[0])))
    path.write_text(json.dumps(ordered, indent=2) + "\n")
    return path


def unbundle(bundle: Path, out_dir: Path) -> None:
    for name, table in json.loads(bundle.read_text()).items():
        for cfg in table.values():
            missing = [key for key in CONFIG_KEYS if key not in cfg]
            if missing:
                raise SystemExit(f"{bundle}: {name} has a config without {missing}")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {out_dir / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=[], choices=list(SHAPES))
    parser.add_argument("--experts", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--inter", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 4096, 8, 512],
                        help="in order of importance: a spent budget leaves the later ones at the default")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget for all shapes")
    parser.add_argument("--out-dir", type=Path, default=CONFIG_DIR)
    parser.add_argument("--bundle", type=Path, help="also write every table into this one JSON file")
    parser.add_argument("--unbundle", type=Path, help="split a bundle into --out-dir and exit")
    args = parser.parse_args()

    if args.unbundle:
        unbundle(args.unbundle, args.out_dir)
        return
    if not torch.cuda.is_available():
        raise SystemExit("kernels.tune needs a CUDA device (configs are per GPU model)")
    shapes = [SHAPES[name] for name in args.shapes]
    if args.experts:
        shapes.append((args.hidden, args.inter, args.experts, args.top_k))
    if not shapes:
        raise SystemExit("name --shapes or give --experts/--hidden/--inter/--top-k")
    device_name = torch.cuda.get_device_name()
    deadline = time.monotonic() + args.budget_s
    bundle = {}
    for index, (hidden, inter, experts, top_k) in enumerate(shapes):
        # each shape gets an equal share of what is left, so a slow first shape cannot starve the rest
        shape_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(shapes) - index)
        print(f"{device_name}: H={hidden} I={inter} E={experts} k={top_k}", flush=True)
        table = tune_shape(hidden, inter, experts, top_k, args.tokens, deadline=shape_deadline,
                           dtype=getattr(torch, args.dtype), log=lambda msg: print(msg, flush=True))
        if table:
            path = write_table(table, experts, inter, device_name, args.out_dir)
            bundle[path.name] = json.loads(path.read_text())
            print(f"wrote {path}", flush=True)
        torch.cuda.empty_cache()
    if args.bundle:
        args.bundle.write_text(json.dumps(bundle, indent=2) + "\n")


if __name__ == "__main__":
    main()
