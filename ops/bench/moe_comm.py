#!/usr/bin/env python3
"""What combining the routed experts' outputs costs across ranks: the all-reduce Levee runs (every
rank holds all tokens after attention, computes its own experts on them, and one all-reduce of
[tokens, hidden] sums the partial outputs) against an all-to-all dispatch and combine (each token
sent only to the ranks that hold one of its top-k experts, and its expert outputs sent back).

Same run, same process group (gloo on CPU here; NCCL where there are GPUs), same hidden size. The
all-to-all payload is what top-k routing over uniformly spread experts needs: a token goes to a
rank when any of its k experts lives there (`world * (1 - (1 - 1/world)**k)` ranks on average), so
each rank sends its tokens' hidden states to the others it needs and receives the outputs back.

    .venv/bin/python ops/bench/moe_comm.py --world 2 --hidden 7168 --topk 8 --tokens 1 16 128 1024

Prints JSON: per token count, the median milliseconds of each scheme and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _ranks_per_token(world: int, topk: int) -> float:
    return world * (1 - (1 - 1 / world) ** topk)


def _timed(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, args.hidden, dtype=torch.float32)
        reduce_ms = _timed(lambda x=x: dist.all_reduce(x), args.repeats)
        # a rank keeps the share of its tokens whose experts it holds and sends the rest, split
        # evenly among the other ranks; the outputs come back the same way
        remote = max(0.0, _ranks_per_token(world, args.topk) - 1) / max(1, world - 1)
        per_peer = max(1, round(tokens * remote)) if world > 1 else 0
        send = torch.randn(per_peer * (world - 1), args.hidden)
        recv = torch.empty_like(send)
        splits = [0 if r == rank else per_peer for r in range(world)]

        def a2a(send=send, recv=recv, splits=splits) -> None:
            dist.all_to_all_single(recv, send, output_split_sizes=splits, input_split_sizes=splits)  # dispatch
            dist.all_to_all_single(send, recv, output_split_sizes=splits, input_split_sizes=splits)  # combine

        a2a_ms = _timed(a2a, args.repeats)
        rows.append({"tokens": tokens, "all_reduce_ms": round(reduce_ms, 3), "all_to_all_ms": round(a2a_ms, 3),
                     "all_to_all_vs_all_reduce": round(a2a_ms / reduce_ms, 3) if reduce_ms else None,
                     "tokens_sent_per_peer": per_peer})
    if rank == 0:
        out["rows"] = rows
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=7168)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 1024])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--port", type=int, default=29621)
    args = parser.parse_args()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(args.world, args.port, args, out), nprocs=args.world, join=True)
        rows = out["rows"]
    print(json.dumps({"backend": "gloo", "world": args.world, "hidden": args.hidden, "topk": args.topk,
                      "ranks_per_token": round(_ranks_per_token(args.world, args.topk), 3),
                      "cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
