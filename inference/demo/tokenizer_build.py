"""Train a byte-level BPE tokenizer in DeepSeek's layout and write its two checkpoint files.

Used by `inference.demo.train` for the demo checkpoint and by the tokenizer tests, which train a
deliberately small one so that non-ASCII characters are split across byte tokens. No torch here.

Layout, following DeepSeek-V3's published tokenizer:
- byte-level BPE (every byte is in the alphabet, so any text encodes and nothing is unknown);
  digits are split one per token, which makes the toy arithmetic in the demo corpus learnable;
- special tokens `<｜begin▁of▁sentence｜>` (id 0, BOS), `<｜end▁of▁sentence｜>` (id 1, EOS),
  `<｜▁pad▁｜>` (id 2), `<｜User｜>`, `<｜Assistant｜>`;
- `<think>` and `</think>` as added but *not special* tokens: one id each, and they survive
  `decode(skip_special_tokens=True)`, so the platform can split reasoning out of the text;
- `tokenizer_config.json` with `add_bos_token: false` (the chat template writes BOS) and a chat
  template in DeepSeek's style.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]

# System prompts first (joined by a blank line), then each turn after its role marker; an assistant
# turn ends with EOS, which is what the model learns to stop on. Assistant content is rendered as
# given (reasoning, if any, stays in the text; `reasoning_content` never reaches the template).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + ('\n\n' if ns.system else '') + message['content'] -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<｜Assistant｜>' + (message['content'] or '') + '<｜end▁of▁sentence｜>' -}}"
    "{%- elif message['role'] != 'system' -%}"
    "{{- raise_exception('unsupported message role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    def special(content: str) -> dict:
        # The AddedToken-style form DeepSeek's own tokenizer_config.json uses.
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": special(BOS),
        "eos_token": special(EOS),
        "pad_token": special(PAD),
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer_files(tok: Tokenizer, directory: str | Path, *, model_max_length: int) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    with (directory / "tokenizer_config.json").open("w", encoding="utf-8") as f:
        json.dump(tokenizer_config(model_max_length), f, ensure_ascii=False, indent=2)
        f.write("\n")
