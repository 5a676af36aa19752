"""MTP speculative decoding on CPU: acceptance and tokens/s with and without, in the same run.

    .venv/bin/python ops/bench/mtp.py                     # the demo checkpoint and its MTP head
    .venv/bin/python ops/bench/mtp.py --checkpoint DIR --tokens 64 --temperature 0.8 --json out.json

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference import load_model  # noqa: E402
from inference.speculative import generate  # noqa: E402
from inference.tokenizer import Tokenizer  # noqa: E402

PROMPTS = ["What is Levee?", "Tell me a short story.", "Hello", "What color is the sky?", "What is 3 plus 4?",
           "Tell me about black holes.", "Who are you?", "Tell me a joke."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, dtype=torch.float32, device="cpu", mtp=True)
    tok = Tokenizer.from_dir(args.checkpoint)
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
