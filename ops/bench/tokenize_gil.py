"""Does tokenizing a long prompt in a worker thread stop the event loop? (issue 15)

An asyncio loop ticks every 2 ms while one worker thread encodes a prompt of --chars characters;
the report is how long the loop's longest gap was and how many ticks it managed during the
encoding, for `tokenizers`' `encode` (holds the GIL) and `encode_batch` (releases it), and for
Levee's own path (`Tokenizer.encode_chat`: the chat template, then `encode`, which switches to
`encode_batch` past _RELEASE_GIL_CHARS).

    .venv/bin/python ops/bench/tokenize_gil.py [--chars 4000000] [--tokenizer word|demo]

`word` is a whole-word tokenizer built here (fast: the loop's behaviour, not the tokenizer's
speed, is the point); `demo` is the demo checkpoint's byte-level BPE (slow on 4 MB: minutes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.demo.tokenizer_build import ASSISTANT, BOS, EOS, USER  # noqa: E402
from inference.tokenizer import Tokenizer  # noqa: E402

TEMPLATE = ("{{ bos_token }}{% for m in messages %}" + USER + "{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")


def word_tokenizer(directory: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"[UNK]": 0, "levee": 1, "river": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens([BOS, EOS, USER, ASSISTANT])
    hf.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "bos_token": BOS,
                                                                 "eos_token": EOS}, ensure_ascii=False))
    return Tokenizer.from_dir(str(directory))


async def observe(work: Callable[[], object]) -> dict:
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, work)
    end = time.perf_counter()
    ticker.cancel()
    inside = [t for t in ticks if start <= t <= end]
    marks = [start, *inside, end]
    return {"seconds": round(end - start, 2), "ticks": len(inside),
            "longest_stall_ms": round(max(b - a for a, b in zip(marks, marks[1:], strict=False)) * 1000)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=4_000_000)
    parser.add_argument("--tokenizer", choices=["word", "demo"], default="word")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tok = word_tokenizer(Path(tmp)) if args.tokenizer == "word" else \
            Tokenizer.from_dir(str(ROOT / "inference/demo/checkpoint"))
        text = ("levee river " * (args.chars // 12 + 1))[: args.chars]
        messages = [{"role": "user", "content": text}]
        cases = {
            "encode (holds the GIL)": lambda: tok._tok.encode(text, add_special_tokens=False).ids,
            "encode_batch (releases it)": lambda: tok._tok.encode_batch([text], add_special_tokens=False)[0].ids,
            "Levee's encode_chat": lambda: tok.encode_chat(messages),
        }
        for name, work in cases.items():
            print(f"{args.tokenizer:5s} {args.chars:>9,} chars  {name:28s} {asyncio.run(observe(work))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
