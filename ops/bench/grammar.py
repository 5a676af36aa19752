"""The grammar's share of a decode step (inference.grammar inside inference.engine), on this machine.

    python ops/bench/grammar.py [--batch 1 16] [--steps 48] [--threads 1]

For each batch size the demo checkpoint decodes `batch` sequences for `steps` tokens, free and with
every sequence held to a grammar (runs alternate, same greedy sampling path). Reports the mean decode
step of each, their ratio, the mask computation per step (llguidance's threads, started before the
forward) and the part on the step's critical path: waiting for the masks and building the
sampler's [B, V] tensor, and its share of the held step.
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


def run(engine, tok, batch: int, steps: int, constrained: bool) -> dict[str, float]:
    """Decode `batch` sequences for `steps` tokens; per step: wall ms, and with the grammar the ms of
    mask computation (on llguidance's threads, beside the forward) and the ms the step waited for the
    masks and turned them into the sampler's [B, V] tensor (on the step's critical path)."""
    from inference import grammar
    from inference.engine import Request, SamplingParams

    ll = grammar.ll_tokenizer((ROOT / "inference/demo/checkpoint/tokenizer.json").read_text(), engine.vocab,
                              tok.eos_token_id)
    ids = tok.encode_chat([{"role": "user", "content": "Write notes about Levee in JSON."}])
    masker = engine._masker
    spent = {"compute": 0.0, "wait": 0.0}
    real_compute, real_allowed = masker._compute, masker.allowed

    def compute(rows, forced):
        t0 = time.perf_counter()
        try:
            return real_compute(rows, forced)
        finally:
            spent["compute"] += time.perf_counter() - t0

    def allowed(pending, n, device):
        t0 = time.perf_counter()
        try:
            return real_allowed(pending, n, device)
        finally:
            spent["wait"] += time.perf_counter() - t0

    masker._compute, masker.allowed = compute, allowed
    handles = []
    for i in range(batch):
        constraint = grammar.SequenceConstraint.compile(ll, GRAMMAR) if constrained else None
        # the same sampling path either way: greedy, with the end token ignored (both runs decode `steps`)
        params = SamplingParams(max_tokens=steps, temperature=0.0, seed=i, ignore_eos=True)
        handles.append(engine.submit(Request(list(ids), params, constraint=constraint, user=None)))
    before = engine.steps
    t0 = time.perf_counter()
    results = [h.result(600) for h in handles]
    wall = time.perf_counter() - t0
    masker._compute, masker.allowed = real_compute, real_allowed
    taken = max(engine.steps - before, 1)
    assert all(r.usage.completion_tokens == steps for r in results), [r.finish_reason for r in results]
    return {"step": wall / taken, "compute": spent["compute"] / taken, "wait": spent["wait"] / taken}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from inference import grammar, serving
    from inference.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    engine = serving.build_engine(str(ROOT / "inference/demo/checkpoint"))
    tok = Tokenizer.from_dir(ROOT / "inference/demo/checkpoint")
    engine._masker = grammar.BatchMasker(engine.vocab, threads=args.threads)
    try:
        print(f"torch and llguidance threads {args.threads}; {args.steps} decode steps per run; "
              f"median of {args.repeats} runs, free and held runs alternating")
        print(f"{'batch':>5} {'free ms/step':>13} {'held ms/step':>13} {'ratio':>6} {'mask compute ms':>16} "
              f"{'on-path ms':>11} {'on-path share':>14}")
        for batch in args.batch:
            run(engine, tok, batch, 4, False)  # warm-up
            run(engine, tok, batch, 4, True)
            free, held = [], []
            for _ in range(args.repeats):
                free.append(run(engine, tok, batch, args.steps, False))
                held.append(run(engine, tok, batch, args.steps, True))
            f = statistics.median(r["step"] for r in free)
            h = statistics.median(r["step"] for r in held)
            c = statistics.median(r["compute"] for r in held)
            w = statistics.median(r["wait"] for r in held)
            print(f"{batch:>5} {f * 1e3:>13.2f} {h * 1e3:>13.2f} {h / f:>6.2f} {c * 1e3:>16.3f} {w * 1e3:>11.3f} "
                  f"{w / h:>13.1%}")
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
