"""MTP speculative decoding on CPU: acceptance and tokens/s with and without, in the same run.

    .venv/bin/python ops/bench/mtp.py                     # the demo checkpoint and its MTP head
    .venv/bin/python ops/bench/mtp.py --checkpoint DIR --tokens 64 --temperature 0.8 --json out.json
    .venv/bin/python ops/bench/mtp.py --engine --batch 1 4 16   # through the batching engine
    .venv/bin/python ops/bench/mtp.py --engine --temperature 0.7   # sampled requests (seeded) too

--engine: the batching engine (inference.engine.Engine) with and without speculation, each batch
size once per round (which goes first alternates), `--rounds` rounds: B requests submitted at once
(the prompts below, cycled), `--tokens` each (eos ignored), timed from the first submit to the last
completion, in wall time and in the process's CPU time (the engine thread's work; steadier than wall
time on a shared machine). Greedy requests, and with `--temperature T` > 0 a second table of
sampled ones (request i seeded with i). Reports tokens/s of each, their ratio, the acceptance and
steps, and whether the tokens were identical (for sampled requests they are not expected to be:
speculation keeps their distribution, not their draws).

Each prompt is a chat turn rendered by the checkpoint's template; every prompt is decoded once
without and once with speculation (inference.speculative.generate: batch 1, the same contiguous
cache), alternating which goes first, and timed from prefill to the last token. Reports the draft
acceptance rate, the main-model forwards per generated token, and tokens/s of each (totals over
all prompts), plus whether greedy outputs were identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference import load_model  # noqa: E402
from inference.engine import Engine, Request, SamplingParams  # noqa: E402
from inference.speculative import generate  # noqa: E402
from inference.tokenizer import Tokenizer  # noqa: E402

PROMPTS = ["What is Levee?", "Tell me a short story.", "Hello", "What color is the sky?", "What is 3 plus 4?",
           "Tell me about black holes.", "Who are you?", "Tell me a joke."]


def engine_run(model, prompts: list[list[int]], batch: int, tokens: int, speculative: bool,
               temperature: float = 0.0) -> dict:
    eng = Engine(model, kv_budget_bytes=256 << 20, max_batch=max(batch, 1), speculative=speculative).start()
    try:
        eng.submit(Request(prompts[0], SamplingParams(max_tokens=4, temperature=0))).result(60)  # warm up
        before = eng.stats()
        started, cpu_started = time.perf_counter(), time.process_time()
        handles = [eng.submit(Request(prompts[i % len(prompts)],
                                      SamplingParams(max_tokens=tokens, temperature=temperature, seed=i,
                                                     ignore_eos=True)))
                   for i in range(batch)]
        done = [h.result(600) for h in handles]
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        after = eng.stats()
    finally:
        eng.stop()
    return {"seconds": seconds, "cpu": cpu, "tokens": sum(c.usage.completion_tokens for c in done),
            "ids": [c.token_ids for c in done], "steps": after["steps"] - before["steps"],
            "drafted": after["spec_drafted"] - before["spec_drafted"],
            "accepted": after["spec_accepted"] - before["spec_accepted"]}


def engine_bench(model, tok, args) -> None:
    prompts = [tok.encode_chat([{"role": "user", "content": t}], add_generation_prompt=True) for t in PROMPTS]
    rows = [row | {"temperature": 0.0} for row in engine_table(model, prompts, args, 0.0)]
    if args.temperature > 0:
        rows += [row | {"temperature": args.temperature} for row in engine_table(model, prompts, args, args.temperature)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def engine_table(model, prompts: list[list[int]], args, temperature: float) -> list[dict]:
    rows = []
    kind = f"sampled (temperature {temperature})" if temperature > 0 else "greedy"
    print(f"engine, {args.tokens} {kind} tokens per request, {args.rounds} round(s), {args.threads} thread(s)")
    print("| batch | tokens/s plain | tokens/s MTP | ratio | per CPU-second plain | MTP | ratio | acceptance "
          "| steps plain → MTP | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch:
        tot = {k: {"seconds": 0.0, "cpu": 0.0, "tokens": 0, "steps": 0} for k in (False, True)}
        drafted = accepted = 0
        identical = True
        for r in range(args.rounds):
            runs = {}
            for spec in ((False, True) if r % 2 == 0 else (True, False)):
                runs[spec] = engine_run(model, prompts, batch, args.tokens, spec, temperature)
                for k in ("seconds", "cpu", "tokens", "steps"):
                    tot[spec][k] += runs[spec][k]
            drafted += runs[True]["drafted"]
            accepted += runs[True]["accepted"]
            identical = identical and runs[True]["ids"] == runs[False]["ids"]
        plain = tot[False]["tokens"] / tot[False]["seconds"]
        spec = tot[True]["tokens"] / tot[True]["seconds"]
        acc = accepted / max(1, drafted)
        plain_cpu = tot[False]["tokens"] / tot[False]["cpu"]
        spec_cpu = tot[True]["tokens"] / tot[True]["cpu"]
        print(f"| {batch} | {plain:.1f} | {spec:.1f} | {spec / plain:.2f}x | {plain_cpu:.1f} | {spec_cpu:.1f} | "
              f"{spec_cpu / plain_cpu:.2f}x | {acc:.1%} | "
              f"{tot[False]['steps']} → {tot[True]['steps']} | {'yes' if identical else 'no' if temperature else 'NO'} |")
        rows.append({"batch": batch, "plain_tps": plain, "spec_tps": spec, "ratio": spec / plain,
                     "plain_tps_cpu": plain_cpu, "spec_tps_cpu": spec_cpu, "acceptance": acc,
                     "steps_plain": tot[False]["steps"], "steps_spec": tot[True]["steps"], "identical": identical})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--engine", action="store_true", help="measure the batching engine instead")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, dtype=torch.float32, device=args.device, mtp=True)
    tok = Tokenizer.from_dir(args.checkpoint)
    if args.engine:
        engine_bench(model, tok, args)
        return
    totals = {"plain_s": 0.0, "spec_s": 0.0, "tokens": 0, "drafted": 0, "accepted": 0,
              "plain_forwards": 0, "spec_forwards": 0, "identical": True}
    generate(model, tok.encode_chat([{"role": "user", "content": "warm up"}], add_generation_prompt=True), 8)
    for i, text in enumerate(PROMPTS):
        prompt = tok.encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)
        runs = {}
        for speculate in ((False, True) if i % 2 == 0 else (True, False)):
            runs[speculate] = generate(model, prompt, args.tokens, speculate=speculate,
                                       temperature=args.temperature, seed=i)
        plain, spec = runs[False], runs[True]
        totals["plain_s"] += plain.seconds
        totals["spec_s"] += spec.seconds
        totals["tokens"] += args.tokens
        totals["drafted"] += spec.drafted
        totals["accepted"] += spec.accepted
        totals["plain_forwards"] += plain.forwards + 1
        totals["spec_forwards"] += spec.forwards + 1
        totals["identical"] = bool(totals["identical"] and (args.temperature > 0 or plain.tokens == spec.tokens))
    acc = totals["accepted"] / max(1, totals["drafted"])
    plain_tps = totals["tokens"] / totals["plain_s"]
    spec_tps = totals["tokens"] / totals["spec_s"]
    print(f"{len(PROMPTS)} prompts x {args.tokens} tokens, temperature {args.temperature}, {args.threads} thread(s)")
    print(f"  acceptance {acc:.1%} ({totals['accepted']}/{totals['drafted']} drafts)")
    print(f"  forwards per token: plain {totals['plain_forwards'] / totals['tokens']:.2f}, "
          f"speculative {totals['spec_forwards'] / totals['tokens']:.2f}")
    print(f"  tokens/s: plain {plain_tps:.1f}, speculative {spec_tps:.1f} ({spec_tps / plain_tps:.2f}x)")
    if args.temperature <= 0:
        print(f"  greedy outputs identical: {totals['identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps({**totals, "acceptance": acc, "plain_tps": plain_tps,
                                               "spec_tps": spec_tps}, indent=2))


if __name__ == "__main__":
    main()
