"""`python -m inference generate`: load a checkpoint, run one request through the engine, stream it.

    python -m inference generate --checkpoint DIR --prompt "Why is the sky blue?"
    python -m inference generate --checkpoint DIR --prompt-ids 1,2,3 --max-tokens 16 --temperature 0

--checkpoint defaults to $LEVEE_CHECKPOINT. --prompt goes through the checkpoint's chat template
(--raw to encode the text as is) and needs inference.tokenizer; --prompt-ids needs no tokenizer and
prints token ids.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a completion for one prompt")
    gen.add_argument("--checkpoint", default=os.environ.get("LEVEE_CHECKPOINT"),
                     help="Hugging Face-format checkpoint directory (default: $LEVEE_CHECKPOINT)")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="user message (rendered with the chat template unless --raw)")
    src.add_argument("--prompt-ids", help="comma-separated token ids, fed as they are")
    gen.add_argument("--raw", action="store_true", help="encode --prompt without the chat template")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's)")
    gen.add_argument("--kv-budget-mb", type=int, default=256)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.checkpoint:
        print("error: --checkpoint DIR or LEVEE_CHECKPOINT is required", file=sys.stderr)
        return 2
    import torch

    from inference import load_model
    from inference.engine import Engine, Request, SamplingParams

    tokenizer = None
    if args.prompt is not None:
        from inference.tokenizer import IncrementalDetokenizer, Tokenizer

        tokenizer = Tokenizer.from_dir(args.checkpoint)
        if args.raw:
            prompt_ids = tokenizer.encode(args.prompt)
        else:
            messages = [{"role": "user", "content": args.prompt}]
            prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    else:
        try:
            prompt_ids = [int(x) for x in args.prompt_ids.replace(" ", "").split(",") if x]
        except ValueError:
            print(f"error: --prompt-ids must be comma-separated integers, got {args.prompt_ids!r}", file=sys.stderr)
            return 2

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_model(args.checkpoint, dtype=dtype, device=args.device)
    factory = (lambda: IncrementalDetokenizer(tokenizer)) if tokenizer is not None else None
    engine = Engine(model, kv_budget_bytes=args.kv_budget_mb << 20, max_batch=1, detokenizer_factory=factory)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, ignore_eos=args.ignore_eos)
    engine.start()
    started = time.perf_counter()
    try:
        handle = engine.submit(Request(prompt_ids, params))
        last = None
        for ev in handle:
            if tokenizer is not None:
                sys.stdout.write(ev.text)
            elif ev.token_ids:
                sys.stdout.write(" ".join(map(str, ev.token_ids)) + " ")
            sys.stdout.flush()
            last = ev
    except KeyboardInterrupt:
        handle.cancel()
        return 130
    finally:
        engine.stop()
    elapsed = time.perf_counter() - started
    sys.stdout.write("\n")
    if last is not None and last.usage is not None:
        u = last.usage
        print(f"[{last.finish_reason}] prompt {u.prompt_tokens} tokens, completion {u.completion_tokens} tokens "
              f"in {elapsed:.2f}s", file=sys.stderr)
        if last.error:
            print(f"[{last.error}]", file=sys.stderr)
    return 0
