"""The grammar's share of a decode step (inference.grammar inside inference.engine), on this machine.

    python ops/bench/grammar.py [--batch 1 16] [--steps 48] [--threads 1]

For each batch size: the demo checkpoint decodes `batch` sequences for `steps` tokens, first free,
then with every sequence held to a JSON schema (llguidance; masks computed on its threads while the
forward runs, then applied to the logits). Reports the mean decode step of each run, the ratio, and
the time the engine waited for masks plus applied them (the part of the grammar on the step's
critical path), measured inside the same constrained run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# A JSON object whose one string value is open for the whole run (it ends only after a control byte
# the model practically never samples): every step of every sequence is masked, and no sequence ends
# early, so the free and the held runs decode the same number of tokens in the same batches.
GRAMMAR = 'start: "{\\"notes\\": \\"" /[^"\\\\\\x00-\\x1f]*/ "\\x01" "\\"}"'


def run(engine, tok, batch: int, steps: int, constrained: bool) -> tuple[float, float]:
    from inference import grammar
    from inference.engine import Request, SamplingParams

    ll = grammar.ll_tokenizer((ROOT / "inference/demo/checkpoint/tokenizer.json").read_text(), engine.vocab,
                              tok.eos_token_id)
    ids = tok.encode_chat([{"role": "user", "content": "Write notes about Levee in JSON."}])
    masker_time = [0.0]
    masker = engine._masker
    if constrained and masker is not None:
        original = masker.apply

        def timed(pending, logits):
            t0 = time.perf_counter()
            original(pending, logits)
            masker_time[0] += time.perf_counter() - t0

        masker.apply = timed
    handles = []
    for i in range(batch):
        constraint = grammar.SequenceConstraint.compile(ll, GRAMMAR) if constrained else None
        params = SamplingParams(max_tokens=steps, temperature=1.0, seed=i, ignore_eos=True)
        handles.append(engine.submit(Request(list(ids), params, constraint=constraint)))
    before = engine.steps
    t0 = time.perf_counter()
    results = [h.result(600) for h in handles]
    wall = time.perf_counter() - t0
    taken = engine.steps - before
    if constrained and masker is not None:
        masker.apply = original
    assert all(r.usage.completion_tokens == steps for r in results), [r.finish_reason for r in results]
    return wall / max(taken, 1), masker_time[0] / max(taken, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from inference import grammar, serving
    from inference.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    engine = serving.build_engine(str(ROOT / "inference/demo/checkpoint"))
    tok = Tokenizer.from_dir(ROOT / "inference/demo/checkpoint")
    engine._masker = grammar.BatchMasker(engine.vocab, threads=args.threads)  # so its apply can be timed
    try:
        print(f"torch threads {args.threads}; {args.steps} decode steps per run; median of {args.repeats} runs")
        print(f"{'batch':>5} {'free ms/step':>13} {'grammar ms/step':>16} {'ratio':>6} {'mask wait+apply ms':>19}")
        for batch in args.batch:
            run(engine, tok, batch, 4, False)  # warm-up
            free = statistics.median(run(engine, tok, batch, args.steps, False)[0] for _ in range(args.repeats))
            timed = [run(engine, tok, batch, args.steps, True) for _ in range(args.repeats)]
            held = statistics.median(t for t, _ in timed)
            wait = statistics.median(w for _, w in timed)
            print(f"{batch:>5} {free * 1e3:>13.2f} {held * 1e3:>16.2f} {held / free:>6.2f} {wait * 1e3:>19.3f}")
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
