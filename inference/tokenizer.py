"""Tokenizer and chat template of a Hugging Face-format checkpoint, without torch.

The web tier imports this module to count prompt tokens and to render chat prompts, and web
processes must never import torch (docs/architecture.md; import-linter checks it). So this file depends only on the
`tokenizers` library (Rust, no torch) and `jinja2`. Importing transformers here would pull torch in;
tests/inference/test_tokenizer.py checks that importing this module leaves `torch` out of
`sys.modules`.

A checkpoint directory provides:

- `tokenizer.json`: the fast-tokenizer definition (model, pre-tokenizer, decoder, added tokens).
- `tokenizer_config.json`: `chat_template` (a Jinja string, or a list of `{"name", "template"}`),
  `bos_token` / `eos_token` (a string, or an AddedToken-style dict with a `content` key),
  `add_bos_token` / `add_eos_token`. Newer exports keep the template beside it in
  `chat_template.jinja`, which is read when the config has none.

Special tokens are added by this module, not by `tokenizer.json`'s post-processor: that is what the
Llama-style tokenizer classes DeepSeek ships with do (they rebuild the post-processor from
`add_bos_token`), and it keeps `encode(..., add_special_tokens=True)` independent of how a given
`tokenizer.json` was exported.

Reasoning models: `<think>`/`</think>` are ordinary text to this module. Templates render assistant
messages as given, `reasoning_content` is dropped before rendering, and the platform splits the
reasoning out of generated text itself.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from tokenizers import Tokenizer as _HFTokenizer

__all__ = [
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "Tokenizer",
    "TokenizerLoadError",
]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_CONFIG_FILE = "config.json"

# Message keys the template never sees. The platform stores the reasoning of earlier turns but does
# not send it back to the model (DeepSeek's API asks clients to drop it; R1-style templates would
# otherwise render it twice).
_DROPPED_MESSAGE_KEYS = frozenset({"reasoning_content"})


class TokenizerLoadError(ValueError):
    """The checkpoint directory has no usable tokenizer."""


class ChatTemplateError(ValueError):
    """The chat template is missing, does not compile, was refused by the sandbox, or rejected the
    messages through `raise_exception`. The message says which."""


# --- chat template environment -------------------------------------------------------------------


class _RefusingSandbox(ImmutableSandboxedEnvironment):
    """A sandbox that raises on an unsafe attribute at once.

    Jinja's sandbox answers `''.__class__` with an Undefined that only raises when used further, so
    `{{ ''.__class__ }}` would quietly render as an empty string. Refusing at the access makes a
    template that probes Python internals fail loudly, whatever it does next.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` renders its body unchanged.

    Some Hugging Face templates mark the assistant's part with this tag (transformers uses it to
    build training masks); without the extension such templates would not compile.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_environment() -> jinja2.Environment:
    # trim_blocks/lstrip_blocks and loopcontrols are what Hugging Face templates are written for.
    env = _RefusingSandbox(trim_blocks=True, lstrip_blocks=True,
                           extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _make_environment()


# --- loading -------------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or {"content": ..., ...}."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, Mapping) else None
    if isinstance(content, str):
        return content
    raise TokenizerLoadError(f"unrecognised special token entry: {value!r}")


def _select_template(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        named = {item.get("name"): item.get("template") for item in raw if isinstance(item, Mapping)}
        if "default" in named:
            return named["default"]
        if len(named) == 1:
            return next(iter(named.values()))
        raise TokenizerLoadError(
            f"chat_template lists {sorted(map(str, named))} but none is named 'default'")
    raise TokenizerLoadError(f"chat_template must be a string or a list, not {type(raw).__name__}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizerLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path} does not hold a JSON object")
    return data


def _stamp(directory: Path) -> tuple[int, ...]:
    """Changes when any file the tokenizer is built from changes, so a replaced checkpoint is
    reloaded rather than served from the cache."""
    out: list[int] = []
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE):
        try:
            st = os.stat(directory / name)
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [-1, -1]
    return tuple(out)


# `tokenizers` releases the GIL in encode_batch but not in encode: a long text encoded with encode
# stops every other thread of the process (a web process's event loop included) until it is done.
# Measured on a 4 MiB prompt: the event loop stalled for the whole encoding (~60 s on the loaded
# 2-core box) with encode in a worker thread, ~4.5 s (the chat template's rendering and the ids'
# conversion, which need the GIL) with encode_batch. Below this length the difference is nothing.
_RELEASE_GIL_CHARS = 8192

_cache: dict[str, tuple[tuple[int, ...], Tokenizer]] = {}
_cache_lock = threading.Lock()


# --- the tokenizer -------------------------------------------------------------------------------


class _Encoding(Protocol):
    @property
    def ids(self) -> list[int]: ...


class HFTokenizer(Protocol):
    """What Tokenizer uses of a `tokenizers.Tokenizer` (that library ships no type information)."""

    def encode(self, sequence: str, *, add_special_tokens: bool = True) -> _Encoding: ...
    def encode_batch(self, inputs: list[str], *, add_special_tokens: bool = True) -> list[_Encoding]: ...
    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    def get_vocab_size(self, *, with_added_tokens: bool = True) -> int: ...
    def get_added_tokens_decoder(self) -> dict[int, Any]: ...


class Tokenizer:
    """Encode, decode and render chats for one checkpoint. Nothing changes after construction
    except the lazily compiled template, so one instance is shared by all requests and threads."""

    def __init__(self, hf_tokenizer: HFTokenizer, config: Mapping[str, Any],
                 chat_template: str | None = None, *, model_config: Mapping[str, Any] | None = None,
                 source: str = "<memory>") -> None:
        self._tok = hf_tokenizer
        self._source = source
        self.chat_template = chat_template
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.add_eos_token = bool(config.get("add_eos_token", False))
        model_config = model_config or {}
        self.bos_token_id = self._resolve(self.bos_token, model_config.get("bos_token_id"), "bos")
        self.eos_token_id = self._resolve(self.eos_token, model_config.get("eos_token_id"), "eos")
        if self.bos_token is None and self.bos_token_id is not None:
            self.bos_token = self._tok.id_to_token(self.bos_token_id)
        if self.eos_token is None and self.eos_token_id is not None:
            self.eos_token = self._tok.id_to_token(self.eos_token_id)
        # Everything else the config names as a special token, for templates that use them.
        self._template_tokens = {
            key: _token_content(config.get(key))
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self._template_tokens["bos_token"] = self.bos_token
        self._template_tokens["eos_token"] = self.eos_token
        self._compiled: jinja2.Template | None = None
        self._added_ids = set(self._tok.get_added_tokens_decoder())

    def _resolve(self, token: str | None, fallback: Any, what: str) -> int | None:
        if token is not None:
            token_id = self._tok.token_to_id(token)
            if token_id is None:
                raise TokenizerLoadError(f"{what}_token {token!r} is not in the vocabulary of {self._source}")
            return token_id
        # config.json may hold a list of stop ids (newer exports); the first is the canonical one.
        if isinstance(fallback, list):
            fallback = fallback[0] if fallback else None
        return fallback if isinstance(fallback, int) else None

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load (or return the cached) tokenizer of a checkpoint directory."""
        directory = Path(path).resolve()
        key = str(directory)
        stamp = _stamp(directory)
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        tokenizer = cls._load(directory)
        with _cache_lock:
            _cache[key] = (stamp, tokenizer)
        return tokenizer

    @classmethod
    def _load(cls, directory: Path) -> Tokenizer:
        tokenizer_file = directory / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise TokenizerLoadError(f"{tokenizer_file} not found")
        try:
            hf = _HFTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises a plain Exception on a malformed file
            raise TokenizerLoadError(f"cannot load {tokenizer_file}: {exc}") from exc
        config_file = directory / TOKENIZER_CONFIG_FILE
        config = _read_json(config_file) if config_file.is_file() else {}
        template = _select_template(config.get("chat_template"))
        if template is None and (directory / CHAT_TEMPLATE_FILE).is_file():
            template = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        model_file = directory / MODEL_CONFIG_FILE
        model_config = _read_json(model_file) if model_file.is_file() else {}
        return cls(hf, config, template, model_config=model_config, source=str(directory))

    # --- ids and text ---

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce, added tokens included. A model's
        `config.vocab_size` may be larger (embeddings padded for speed), never smaller."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (byte-level BPE pieces map back through GPT-2's byte
        alphabet; added tokens are their text). Part of a character for a token that splits one."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._added_ids:
            return str(piece).encode("utf-8")
        table = _byte_decoder()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        return str(self._tok.decode([token_id], skip_special_tokens=False)).encode("utf-8")

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. from a rendered chat
        template) become their ids. With `add_special_tokens`, BOS/EOS are added as the
        tokenizer config's add_bos_token/add_eos_token say."""
        if len(text) < _RELEASE_GIL_CHARS:
            ids = self._tok.encode(text, add_special_tokens=False).ids
        else:  # the same encoding; encode_batch runs without the GIL, encode holds it throughout
            ids = self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # --- chat ---

    def _template(self) -> jinja2.Template:
        if self._compiled is None:
            if not self.chat_template:
                raise ChatTemplateError(f"{self._source} has no chat template")
            try:
                self._compiled = _ENV.from_string(self.chat_template)
            except jinja2.TemplateSyntaxError as exc:
                raise ChatTemplateError(
                    f"chat template of {self._source} does not compile (line {exc.lineno}): {exc.message}"
                ) from exc
        return self._compiled

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                            add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None,
                            thinking: bool = False) -> str:
        """Render `messages` (dicts with `role` and `content`; an assistant's `tool_calls`, a tool's
        `tool_call_id`, `prefix` on a last assistant message to continue) into the prompt text.
        `tools` are OpenAI-style function definitions; `thinking` asks a hybrid template to open the
        model's reasoning (templates that do not know these variables ignore them)."""
        clean = [_clean_message(i, m) for i, m in enumerate(messages)]
        template = self._template()
        try:
            return template.render(messages=clean, add_generation_prompt=add_generation_prompt,
                                   tools=list(tools) if tools else None, thinking=thinking,
                                   **self._template_tokens)
        except SecurityError as exc:
            raise ChatTemplateError(f"chat template of {self._source} was refused by the sandbox: {exc}") from exc
        except jinja2.TemplateError as exc:
            # raise_exception() and undefined-variable errors alike: the template rejected the chat.
            raise ChatTemplateError(f"chat template of {self._source} failed: {exc}") from exc

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None,
                    thinking: bool = False) -> list[int]:
        """Prompt ids for `messages`. The template writes BOS itself, so nothing is added here."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                    tools=tools, thinking=thinking))

    def count_chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        return len(self.encode_chat(messages))

    def __repr__(self) -> str:
        return f"Tokenizer({self._source!r}, vocab_size={self.vocab_size})"


_BYTE_DECODER: dict[str, int] = {}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, inverted (what byte-level BPE vocabularies use)."""
    if not _BYTE_DECODER:
        keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
            + list(range(ord("®"), ord("ÿ") + 1))
        chars, n = list(keep), 0
        for b in range(256):
            if b not in keep:
                keep.append(b)
                chars.append(256 + n)
                n += 1
        _BYTE_DECODER.update({chr(c): b for b, c in zip(keep, chars, strict=True)})
    return _BYTE_DECODER


def _clean_message(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"message {index} is a {type(message).__name__}, not a mapping")
    role = message.get("role")
    if not isinstance(role, str):
        raise ChatTemplateError(f"message {index} has no string 'role'")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ChatTemplateError(f"message {index} content must be a string or null")
    return {k: v for k, v in message.items() if k not in _DROPPED_MESSAGE_KEYS}


# --- streaming detokenization ----------------------------------------------------------------------


class IncrementalDetokenizer:
    """Turn generated ids into text as they arrive, one complete piece at a time.

    Byte-level BPE can split one UTF-8 character over several tokens; decoding such a token alone
    gives U+FFFD. `push` therefore holds text back while the decoded window ends in U+FFFD and
    releases it once the character is complete. It decodes only a window of recent ids: the ids
    already emitted once (`prefix`, kept as left context so decoders that strip a leading space
    behave as they do on the whole sequence) plus the ids not yet emitted.

    The concatenation of all `push` results and `flush()` equals `decode(all ids)` for any
    sequence whose bytes are valid UTF-8.
    """

    # A UTF-8 character is at most 4 bytes, so a window still ending in U+FFFD after this many
    # pending ids holds a genuinely invalid byte sequence; release it rather than grow the window.
    MAX_PENDING = 8

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_start = 0  # ids[_prefix_start:_read_start] were emitted; kept as context
        self._read_start = 0    # ids[_read_start:] are not emitted yet

    def _window_texts(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_start:self._read_start], skip_special_tokens=self._skip)
        full = decode(self._ids[self._prefix_start:], skip_special_tokens=self._skip)
        return prefix, full

    def _emit(self, prefix: str, full: str) -> str:
        self._prefix_start, self._read_start = self._read_start, len(self._ids)
        # Drop ids that can no longer be context, so the list does not grow with the stream.
        if self._prefix_start > 0:
            del self._ids[:self._prefix_start]
            self._read_start -= self._prefix_start
            self._prefix_start = 0
        return full[len(prefix):] if full.startswith(prefix) else full

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that is now complete (possibly "")."""
        self._ids.append(token_id)
        prefix, full = self._window_texts()
        pending = len(self._ids) - self._read_start
        if full.endswith("\ufffd") and pending < self.MAX_PENDING:
            return ""
        return self._emit(prefix, full)

    def flush(self) -> str:
        """Return whatever is held back (an unfinished character decodes as U+FFFD)."""
        if self._read_start == len(self._ids):
            return ""
        prefix, full = self._window_texts()
        return self._emit(prefix, full)
