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
- DeepSeek-V3.1's tool tokens (`<｜tool▁calls▁begin｜>` … `<｜tool▁output▁end｜>`) and DeepSeek's FIM
  tokens (`<｜fim▁begin｜>`, `<｜fim▁hole｜>`, `<｜fim▁end｜>`), added and not special for the same
  reason: the platform parses tool calls out of the decoded text;
- `tokenizer_config.json` with `add_bos_token: false` (the chat template writes BOS) and a chat
  template in DeepSeek-V3.1's style: tools listed after the system prompt, calls written as
  `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`, tool results in
  `<｜tool▁outputs▁begin｜>…`, a `thinking` switch that opens `<think>` in the generation prompt, and
  an assistant message with `prefix: true` left open for the model to continue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

TOOL_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
TOOL_CALLS_END = "<｜tool▁calls▁end｜>"
TOOL_CALL_BEGIN = "<｜tool▁call▁begin｜>"
TOOL_CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
TOOL_OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
TOOL_OUTPUTS_END = "<｜tool▁outputs▁end｜>"
TOOL_OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
TOOL_OUTPUT_END = "<｜tool▁output▁end｜>"
FIM_BEGIN = "<｜fim▁begin｜>"
FIM_HOLE = "<｜fim▁hole｜>"
FIM_END = "<｜fim▁end｜>"

SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]
# Added after training, one id each, kept by decode(skip_special_tokens=True).
TEXT_TOKENS = [THINK_OPEN, THINK_CLOSE, TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_SEP,
               TOOL_OUTPUTS_BEGIN, TOOL_OUTPUTS_END, TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END, FIM_BEGIN, FIM_HOLE, FIM_END]

# System prompts first (joined by a blank line), then the tools, then each turn after its role marker;
# an assistant turn ends with EOS, which is what the model learns to stop on. Assistant content is
# rendered as given (`reasoning_content` never reaches the template). An assistant's tool calls follow
# its content; the tool results of a turn go in one outputs block. `thinking` opens `<think>` in the
# generation prompt (a hybrid model: the same weights answer directly without it). An assistant
# message last in the list with `prefix: true` is left open: the model continues it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', in_outputs=false) -%}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + ('\n\n' if ns.system else '') + message['content'] -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- if tools -%}"
    "{{- ('\n\n' if ns.system else '') + '## Tools\nYou can call these functions:\n' -}}"
    "{%- for tool in tools -%}"
    "{{- '### ' + tool['function']['name'] + '\n' -}}"
    "{%- if tool['function']['description'] -%}{{- tool['function']['description'] + '\n' -}}{%- endif -%}"
    "{{- 'Parameters: ' + (tool['function']['parameters'] or {}) | tojson + '\n' -}}"
    "{%- endfor -%}"
    "{{- 'To call one, write " + TOOL_CALLS_BEGIN + TOOL_CALL_BEGIN + "name" + TOOL_SEP + "arguments as JSON"
    + TOOL_CALL_END + TOOL_CALLS_END + ".\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'tool' and ns.in_outputs -%}"
    "{{- '" + TOOL_OUTPUTS_END + "' -}}{%- set ns.in_outputs = false -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<｜Assistant｜>' + (message['content'] or '') -}}"
    "{%- if message['tool_calls'] -%}"
    "{{- '" + TOOL_CALLS_BEGIN + "' -}}"
    "{%- for call in message['tool_calls'] -%}"
    "{{- '" + TOOL_CALL_BEGIN + "' + call['function']['name'] + '" + TOOL_SEP + "' + call['function']['arguments']"
    " + '" + TOOL_CALL_END + "' -}}"
    "{%- endfor -%}"
    "{{- '" + TOOL_CALLS_END + "' -}}"
    "{%- endif -%}"
    "{%- if not (loop.last and message['prefix']) -%}{{- '<｜end▁of▁sentence｜>' -}}{%- endif -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if not ns.in_outputs -%}{{- '" + TOOL_OUTPUTS_BEGIN + "' -}}{%- set ns.in_outputs = true -%}{%- endif -%}"
    "{{- '" + TOOL_OUTPUT_BEGIN + "' + message['content'] + '" + TOOL_OUTPUT_END + "' -}}"
    "{%- elif message['role'] != 'system' -%}"
    "{{- raise_exception('unsupported message role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.in_outputs -%}{{- '" + TOOL_OUTPUTS_END + "' -}}{%- endif -%}"
    "{%- if add_generation_prompt and not (messages and messages[-1]['prefix']) -%}"
    "{{- '<｜Assistant｜>' + ('<think>\n' if thinking else '') -}}"
    "{%- endif -%}"
)


def fim_text(prefix: str, suffix: str, middle: str = "") -> str:
    """A fill-in-the-middle prompt in DeepSeek's order (prefix, hole, suffix, then the middle)."""
    return f"{BOS}{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}{middle}"


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    text_tokens: Iterable[str] = (THINK_OPEN, THINK_CLOSE)) -> Tokenizer:
    """A byte-level BPE of `vocab_size` entries (special tokens included), then `text_tokens` added
    on top in order (the demo checkpoint passes TEXT_TOKENS: reasoning, tool and FIM tokens)."""
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
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in text_tokens])
    return tok


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    def special(content: str) -> dict[str, str | bool]:
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
