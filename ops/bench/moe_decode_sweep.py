"""Sweep the decode (GEMV) kernels' tiles at one token on a CUDA device: each kernel alone,
CUDA-graph replays after an L2 flush, median µs. Prints one line per (layer, kernel, tiles) and
the best of each; --write-tables DIR puts the winners into the T=1 entries of copies of the
committed tables (kernels/configs/), which the launcher reads with LEVEE_MOE_CONFIG_DIR=DIR.

    python ops/bench/moe_decode_sweep.py [--out DIR] [--write-tables DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe import SHAPES, L2Flush, gpu_time_graph  # noqa: E402

from kernels.testing import random_problem, random_routing  # noqa: E402
from kernels.triton_moe import moe_gemv1, moe_gemv2  # noqa: E402

TILES = [(bn, bk, w) for bk in (512, 1024, 2048) for bn in (1, 2, 4, 8) for w in (4, 8) if bn * bk <= 8192]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--write-tables", type=Path, help="put the best tiles into the tables in this directory")
    args = parser.parse_args()
    device = torch.device("cuda")
    flush = L2Flush(device)
    rows = []
    for shape, (hidden, inter, experts, top_k) in SHAPES.items():
        p = random_problem(1, hidden, inter, experts, top_k, dtype=torch.bfloat16, device=device)
        ids, weights = random_routing(args.tokens, experts, top_k, generator=torch.Generator().manual_seed(1),
                                      device=device)
        x = torch.randn(args.tokens, hidden, device=device, dtype=torch.bfloat16)
        out = torch.empty_like(x)
        act = moe_gemv1(x, p.w13, ids)
        for kernel in ("gemv1", "gemv2"):
            for tiles in TILES:
                fn = (partial(moe_gemv1, x, p.w13, ids, tiles) if kernel == "gemv1"
                      else partial(moe_gemv2, act, p.w2, ids, weights, out, tiles))
                try:
                    us = gpu_time_graph(fn, flush, reps=20) * 1e6
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{shape} {kernel} {tiles}: {type(exc).__name__}", flush=True)
                    continue
                rows.append({"shape": shape, "kernel": kernel, "tiles": tiles, "us": us})
                print(f"{shape} {kernel} BLOCK_N={tiles[0]} BLOCK_K={tiles[1]} warps={tiles[2]}: {us:.1f} us", flush=True)
        del p
        torch.cuda.empty_cache()
    for shape in SHAPES:
        for kernel in ("gemv1", "gemv2"):
            mine = [r for r in rows if r["shape"] == shape and r["kernel"] == kernel]
            if mine:
                best = min(mine, key=lambda r: r["us"])
                print(f"best {shape} {kernel}: {best['tiles']} {best['us']:.1f} us")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_decode_sweep.json").write_text(json.dumps(rows, indent=2))
    if args.write_tables:
        # the winners go into the T=1 entry of each layer's table (copied from kernels/configs/)
        from kernels.configs import CONFIG_DIR, config_file_name

        name = torch.cuda.get_device_name(device)
        args.write_tables.mkdir(parents=True, exist_ok=True)
        for shape, (_, inter, experts, _) in SHAPES.items():
            file_name = config_file_name(experts, inter, name)
            src = args.write_tables / file_name
            if not src.is_file():
                src = CONFIG_DIR / file_name
            if not src.is_file():
                continue
            table = json.loads(src.read_text())
            entry = table.get(str(args.tokens))
            if entry is None:
                continue
            for kernel in ("gemv1", "gemv2"):
                mine = [r for r in rows if r["shape"] == shape and r["kernel"] == kernel]
                if mine:
                    entry[kernel] = list(min(mine, key=lambda r: r["us"])["tiles"])
            (args.write_tables / file_name).write_text(json.dumps(table, indent=2) + "\n")
            print(f"wrote {args.write_tables / file_name}: T={args.tokens} {json.dumps(entry)}")


if __name__ == "__main__":
    main()
