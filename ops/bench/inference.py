"""Inference engine benchmark: batched vs one-at-a-time decode, vs transformers, cache memory.

    .venv/bin/python ops/bench/inference.py                       # CPU, builds a random checkpoint
    .venv/bin/python ops/bench/inference.py --threads 1 --ops [REV]  # + ATen ops per decode step, REV vs now
    .venv/bin/python ops/bench/inference.py --threads 1 --long-prefill 32768   # peak memory of one prefill
    python3 ops/bench/inference.py --device cuda --dtype bfloat16  # on a GPU box
    python3 ops/bench/inference.py --checkpoint $LEVEE_CHECKPOINT --device cuda --dtype bfloat16

Everything is measured in one run on one checkpoint: the same R prompts, each generating N tokens
greedily with eos ignored, (a) submitted together, (b) one after another through the same engine,
(c) through transformers' generate() at batch 1 (a peer, test-only dependency), (b) and (c) alternately
in rounds on the same prompts. Reported tokens/s are generated tokens over wall time, prefill
included; the batch-1 ratio is also given per round and in CPU time.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference import load_model  # noqa: E402
from inference.engine import Engine, Request, SamplingParams  # noqa: E402

BENCH_CONFIG = dict(  # tiny but not trivial: ~40M parameters, V3 routing, MLA with q compression
    vocab_size=8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
    num_hidden_layers=4, num_attention_heads=8, q_lora_rank=192, kv_lora_rank=128,
    qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=16, n_shared_experts=1,
    num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True,
    routed_scaling_factor=2.5, max_position_embeddings=2048, initializer_range=0.05,
)


def build_checkpoint(out: Path) -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**BENCH_CONFIG))
    model.save_pretrained(out)


ROOT = Path(__file__).resolve().parents[2]
BEFORE_REV = "6f7e8e7"  # main before the batched sampler and attention landed


def import_engine_at(rev: str, into: Path) -> Any:
    """The `inference` and `kernels` packages as they were at git revision `rev`, importable as
    `inference_<rev>` and `kernels_<rev>` (their absolute imports rewritten), so one process can count
    both engines' ops."""
    name, kname = f"inference_{rev}", f"kernels_{rev}"
    blob = subprocess.run(["git", "archive", rev, "inference", "kernels"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                data = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
                for pkg, new in (("inference", name), ("kernels", kname)):
                    data = re.sub(rf"^(\s*)(from|import) {pkg}([. ])", rf"\1\2 {new}\3", data, flags=re.M)
                top, rest = member.name.split("/", 1)
                target = into / (name if top == "inference" else kname) / rest
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data)
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def decode_step_ops(engine_mod: Any, model: Any, n: int) -> Any:
    """ATen ops and host syncs of one all-decode step of n greedy sequences (engine driven by hand)."""
    from inference.opcount import OpCounter

    eng = engine_mod.Engine(model, kv_budget_bytes=64 << 20, max_batch=max(64, n))
    for i in range(n):
        eng.submit(engine_mod.Request([3 + i] * (32 + i), engine_mod.SamplingParams(max_tokens=64, temperature=0.0,
                                                                                    ignore_eos=True)))
    with torch.inference_mode():
        eng._waiting.extend(eng._incoming)
        eng._incoming.clear()
        eng._admit()
        eng._step()
        eng._step()
        with OpCounter() as ops:
            eng._step()
    return ops


def ops_report(path: str, dtype: torch.dtype, device: str, rev: str) -> dict:
    from inference import engine as engine_now

    with tempfile.TemporaryDirectory() as tmp:
        before = import_engine_at(rev, Path(tmp))
        old_model = before.load_model(path, dtype=dtype, device=device)
        new_model = load_model(path, dtype=dtype, device=device)
        old_engine = importlib.import_module(f"{before.__name__}.engine")
        out = {}
        for n in (1, 16):
            b, a = decode_step_ops(old_engine, old_model, n), decode_step_ops(engine_now, new_model, n)
            out[n] = {"before_ops": b.total, "after_ops": a.total, "before_syncs": b.syncs, "after_syncs": a.syncs}
    return out


def long_prefill(path: str, dtype: torch.dtype, device: str, tokens: int) -> dict:
    model = load_model(path, dtype=dtype, device=device)
    a = model.args
    per_token = a.num_hidden_layers * a.latent_dim * torch.empty((), dtype=dtype).element_size()
    engine = Engine(model, kv_budget_bytes=per_token * (tokens + 64), max_model_len=tokens + 2).start()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, a.vocab_size, (tokens,), generator=g).tolist()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    done = engine.submit(Request(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))).result()
    elapsed = time.perf_counter() - start
    engine.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert done.usage.prompt_tokens == tokens
    return {"tokens": tokens, "seconds": elapsed, "peak_rss_before": rss0, "peak_rss_after": rss1,
            "kv_cache_bytes": engine.cache.data.nbytes, "steps": engine.steps}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def timed_cpu(fn):
    """fn's result, wall seconds and CPU seconds of the whole process (every thread: the engine's
    scheduler and text threads too) — on a shared machine the CPU time moves less with the load."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", help="existing checkpoint (default: build the random bench model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-requests", type=int, default=4,
                    help="prompts per round: each round runs them one after another through the engine, then "
                         "through transformers' generate() at batch 1 (or the other way round), on every prompt")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--ops", nargs="?", const=BEFORE_REV, metavar="REV",
                    help=f"also count ATen ops per decode step, the engine at git revision REV (default "
                         f"{BEFORE_REV}) vs now (needs git)")
    ap.add_argument("--long-prefill", type=int, default=0, metavar="TOKENS",
                    help="only prefill one prompt this long and report peak memory")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    tmp = None
    path = a.checkpoint
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = tmp.name
        build_checkpoint(Path(path))
    if a.long_prefill:
        r = long_prefill(path, dtype, a.device, a.long_prefill)
        print(f"prefill of {r['tokens']} tokens: {r['seconds']:.1f} s in {r['steps']} steps; peak RSS "
              f"{r['peak_rss_before'] / 2**20:.0f} MiB before, {r['peak_rss_after'] / 2**20:.0f} MiB after "
              f"(KV cache {r['kv_cache_bytes'] / 2**20:.0f} MiB)")
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=2))
        return
    ops = ops_report(path, dtype, a.device, a.ops) if a.ops else None
    model = load_model(path, dtype=dtype, device=a.device)
    device = model.device
    args = model.args
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, args.vocab_size, (a.prompt_tokens,), generator=g).tolist() for _ in range(a.requests)]
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, ignore_eos=True)
    total = a.requests * a.max_tokens

    engine = Engine(model, kv_budget_bytes=256 << 20, block_size=16, max_batch=max(64, a.requests)).start()
    engine.submit(Request(prompts[0], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))).result()

    def concurrent():
        hs = [engine.submit(Request(p, params)) for p in prompts]
        return [h.result() for h in hs]

    batched, t_batch = timed(concurrent)

    ref = None
    try:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        ref.generation_config.eos_token_id = None
        ref.generation_config.pad_token_id = 0
        with torch.no_grad():
            ref.generate(torch.tensor([prompts[0]], device=device), max_new_tokens=8, do_sample=False)
    except Exception as exc:  # the peer is optional on a serving box
        print(f"transformers comparison skipped: {exc}", file=sys.stderr)

    def hf(batch):
        with torch.no_grad():
            for p in batch:
                ref.generate(torch.tensor([p], device=device), max_new_tokens=a.max_tokens, do_sample=False)
        sync(device)

    # One after another through the engine, and through transformers, alternately in rounds of
    # --hf-requests prompts (who goes first alternates too), so both see the same machine load.
    serial = []
    t_serial = cpu_serial = 0.0
    rounds = []
    n = max(1, min(a.hf_requests, a.requests))
    for r, lo in enumerate(range(0, a.requests, n)):
        batch = prompts[lo : lo + n]
        runs = [("engine", lambda b=batch: [engine.submit(Request(p, params)).result() for p in b])]
        if ref is not None:
            runs.append(("hf", lambda b=batch: hf(b)))
        times = {}
        for name, fn in runs[:: 1 if r % 2 == 0 else -1]:
            out, wall, cpu = timed_cpu(fn)
            times[name] = (wall, cpu)
            if name == "engine":
                serial += out
        t_serial += times["engine"][0]
        cpu_serial += times["engine"][1]
        if ref is not None:
            tokens = len(batch) * a.max_tokens
            rounds.append({"tokens": tokens, "engine_wall_s": times["engine"][0], "hf_wall_s": times["hf"][0],
                           "engine_cpu_s": times["engine"][1], "hf_cpu_s": times["hf"][1],
                           "ratio_wall": times["hf"][0] / times["engine"][0],
                           "ratio_cpu": times["hf"][1] / times["engine"][1]})
    assert [c.token_ids for c in batched] == [c.token_ids for c in serial], "batching changed an output"
    engine.stop()
    hf_tps = (sum(x["tokens"] for x in rounds) / sum(x["hf_wall_s"] for x in rounds)) if rounds else None

    elem = torch.empty((), dtype=dtype).element_size()
    latent = args.num_hidden_layers * 1000 * args.latent_dim * elem
    expanded = args.num_hidden_layers * 1000 * args.num_attention_heads * (args.qk_head_dim + args.v_head_dim) * elem
    measured = engine.cache.data.nbytes / (engine.cache.num_blocks * engine.block_size) * 1000

    res = {
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "requests": a.requests, "prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens,
        "concurrent_tok_s": total / t_batch,
        "sequential_tok_s": total / t_serial,
        "speedup_vs_sequential": t_serial / t_batch,
        "transformers_b1_tok_s": hf_tps,
        "speedup_vs_transformers_b1": (total / t_batch) / hf_tps if hf_tps else None,
        "sequential_vs_transformers_b1": (total / t_serial) / hf_tps if hf_tps else None,
        "sequential_cpu_s": cpu_serial,
        "b1_rounds": rounds,
        "b1_ratio_wall_median": statistics.median(x["ratio_wall"] for x in rounds) if rounds else None,
        "b1_ratio_cpu_median": statistics.median(x["ratio_cpu"] for x in rounds) if rounds else None,
        "kv_bytes_per_1000_tokens_latent": latent,
        "kv_bytes_per_1000_tokens_latent_measured": measured,
        "kv_bytes_per_1000_tokens_expanded": expanded,
        "kv_expanded_over_latent": expanded / latent,
        "decode_step_ops": ops,
    }
    print(f"checkpoint: {'random bench model' if a.checkpoint is None else path}; {res['device']}, {a.dtype}, "
          f"{res['threads']} threads; {a.requests} requests x {a.prompt_tokens} prompt + {a.max_tokens} generated")
    print(f"  16 concurrent     {res['concurrent_tok_s']:9.1f} tok/s")
    print(f"  one after another {res['sequential_tok_s']:9.1f} tok/s   (concurrent = {res['speedup_vs_sequential']:.1f}x)")
    if hf_tps:
        print(f"  transformers b=1  {hf_tps:9.1f} tok/s   (concurrent = {res['speedup_vs_transformers_b1']:.1f}x, "
              f"one-at-a-time = {res['sequential_vs_transformers_b1']:.2f}x)")
        walls = ", ".join(f"{x['ratio_wall']:.2f}" for x in rounds)
        cpus = ", ".join(f"{x['ratio_cpu']:.2f}" for x in rounds)
        print(f"  batch 1, engine / transformers, alternate rounds of {n}: wall {walls} "
              f"(median {res['b1_ratio_wall_median']:.2f}x); CPU time {cpus} (median {res['b1_ratio_cpu_median']:.2f}x)")
    print(f"  KV per 1,000 tokens: latent {latent / 2**20:.2f} MiB (engine allocates {measured / 2**20:.2f}), "
          f"expanded {expanded / 2**20:.2f} MiB ({expanded / latent:.1f}x)")
    for n, r in (ops or {}).items():
        print(f"  one decode step, batch {n:2d}: {r['before_ops']} ATen ops / {r['before_syncs']} syncs at "
              f"{a.ops}, {r['after_ops']} / {r['after_syncs']} now ({r['before_ops'] / r['after_ops']:.2f}x fewer)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
