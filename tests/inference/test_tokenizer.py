"""inference.tokenizer: encoding, streaming detokenization, chat templates, and no torch.

The fixture trains a byte-level BPE in DeepSeek's layout on a little English only, with a small
vocabulary, so every CJK character and emoji is split over several byte tokens: that is the case
the incremental detokenizer exists for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.demo.tokenizer_build import (
    ASSISTANT,
    BOS,
    EOS,
    THINK_CLOSE,
    THINK_OPEN,
    USER,
    tokenizer_config,
    train_tokenizer,
    write_tokenizer_files,
)
from inference.tokenizer import ChatTemplateError, IncrementalDetokenizer, Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]

ENGLISH = [
    "Hello there! How are you today?",
    "Levee is a self-hostable platform that serves a language model.",
    "The river rose, and the levee held through the night.",
    "What is two plus three? Two plus three is five.",
    "Please count the tokens in this sentence before sending it.",
] * 20

MIXED = [
    "plain ascii text, with punctuation!",
    "日本語のテキストと中文文本",
    "emoji 🎉🚀 and a family 👨‍👩‍👧 with joiners",
    "accents: café, naïve, Ærøskøbing; math: ∑ x² ≤ ∞",
    "mixed: Levee says 你好 👋 to everyone",
]

CONVERSATION = [
    {"role": "system", "content": "You are Levee's demo model."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is Levee?"},
]


def make_checkpoint_dir(directory: Path, *, config_overrides: dict | None = None,
                        vocab_size: int = 300) -> Path:
    tok = train_tokenizer(ENGLISH, vocab_size=vocab_size)
    write_tokenizer_files(tok, directory, model_max_length=512)
    if config_overrides is not None:
        config = tokenizer_config(512)
        config.update(config_overrides)
        config = {k: v for k, v in config.items() if v is not ...}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return make_checkpoint_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(checkpoint_dir) -> Tokenizer:
    return Tokenizer.from_dir(checkpoint_dir)


def with_template(tmp_path: Path, template) -> Tokenizer:
    return Tokenizer.from_dir(make_checkpoint_dir(tmp_path, config_overrides={"chat_template": template}))


# --- encode / decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", MIXED)
def test_it_round_trips_ascii_cjk_and_emoji(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text


def test_it_reads_bos_and_eos_from_addedtoken_dicts(tokenizer):
    assert tokenizer.bos_token == BOS and tokenizer.bos_token_id == 0
    assert tokenizer.eos_token == EOS and tokenizer.eos_token_id == 1


def test_it_reads_bos_and_eos_given_as_plain_strings(tmp_path):
    tok = Tokenizer.from_dir(make_checkpoint_dir(tmp_path, config_overrides={"bos_token": EOS, "eos_token": BOS}))
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 0)


def test_vocab_size_counts_added_tokens(tokenizer):
    assert tokenizer.vocab_size == 300 + 2  # trained vocabulary + <think>, </think>
    assert tokenizer.token_to_id(THINK_CLOSE) == tokenizer.vocab_size - 1


def test_add_special_tokens_follows_add_bos_token(tmp_path, tokenizer):
    assert tokenizer.encode("Hello", add_special_tokens=True) == tokenizer.encode("Hello")
    with_bos = Tokenizer.from_dir(make_checkpoint_dir(tmp_path, config_overrides={"add_bos_token": True}))
    assert with_bos.encode("Hello", add_special_tokens=True) == [0, *with_bos.encode("Hello")]


def test_special_tokens_in_text_become_single_ids_and_are_skipped_on_decode(tokenizer):
    ids = tokenizer.encode(f"{USER}Hi{ASSISTANT}")
    assert ids[0] == tokenizer.token_to_id(USER) and ids[-1] == tokenizer.token_to_id(ASSISTANT)
    assert tokenizer.decode(ids) == "Hi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == f"{USER}Hi{ASSISTANT}"


def test_think_markers_are_single_ordinary_tokens(tokenizer):
    ids = tokenizer.encode(f"{THINK_OPEN}hmm{THINK_CLOSE}Answer")
    assert ids[0] == tokenizer.token_to_id(THINK_OPEN)
    assert tokenizer.token_to_id(THINK_CLOSE) in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"{THINK_OPEN}hmm{THINK_CLOSE}Answer"


# --- incremental detokenization --------------------------------------------------------------------


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer)
    return [detok.push(i) for i in ids] + [detok.flush()]


@pytest.mark.parametrize("text", MIXED)
def test_streamed_text_never_shows_half_a_character_and_equals_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids)
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_the_fixture_really_splits_characters_across_tokens(tokenizer):
    # Guards the test above: if no token decoded to a partial character it would prove nothing.
    ids = tokenizer.encode("你好 👋")
    assert len(ids) > len("你好 👋")
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_streaming_releases_text_as_soon_as_it_is_complete(tokenizer):
    ids = tokenizer.encode("ab 你 cd")
    pieces = stream(tokenizer, ids)
    assert pieces[-1] == ""  # nothing was left for flush
    # Every token of the ASCII parts yields text immediately; only the CJK bytes wait.
    assert sum(1 for p in pieces if p) >= 4
    assert "你" in "".join(pieces[: len(tokenizer.encode("ab 你"))])


def test_flush_returns_an_unfinished_character_as_replacement(tokenizer):
    first_byte = tokenizer.encode("🚀")[0]
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.push(first_byte) == ""
    assert detok.flush() == "\ufffd"
    assert detok.flush() == ""


def test_skipped_special_tokens_stream_as_nothing(tokenizer):
    ids = tokenizer.encode(f"Hi{EOS}")
    assert "".join(stream(tokenizer, ids)) == "Hi"


def test_each_push_decodes_a_short_window_not_the_whole_stream(tokenizer, monkeypatch):
    ids = tokenizer.encode(" ".join(MIXED) * 20)
    assert len(ids) > 1000
    widths: list[int] = []
    real_decode = tokenizer.decode

    def counting_decode(window, skip_special_tokens=True):
        window = list(window)
        widths.append(len(window))
        return real_decode(window, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(tokenizer, "decode", counting_decode)
    pieces = stream(tokenizer, ids)
    assert max(widths) <= IncrementalDetokenizer.MAX_PENDING + 4
    assert "".join(pieces) == real_decode(ids)


# --- chat template ---------------------------------------------------------------------------------


def test_it_renders_system_user_assistant_and_the_generation_prompt(tokenizer):
    expected = (f"{BOS}You are Levee's demo model.{USER}Hello{ASSISTANT}Hi! How can I help?{EOS}"
                f"{USER}What is Levee?{ASSISTANT}")
    assert tokenizer.apply_chat_template(CONVERSATION) == expected
    assert tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=False) == expected[: -len(ASSISTANT)]


def test_it_encodes_and_renders_like_transformers_does(checkpoint_dir, tokenizer):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(checkpoint_dir))
    for add in (True, False):
        text = reference.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add)
        assert tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=add) == text
    encoded = reference.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    assert tokenizer.encode_chat(CONVERSATION) == list(encoded["input_ids"])
    for text in MIXED:
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)
        assert tokenizer.encode(text, add_special_tokens=True) == reference.encode(text)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (reference.bos_token_id, reference.eos_token_id)
    assert tokenizer.vocab_size == len(reference)


def test_encode_chat_starts_with_bos_and_ends_with_the_assistant_marker(tokenizer):
    ids = tokenizer.encode_chat([{"role": "user", "content": "Hello"}])
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.token_to_id(ASSISTANT)
    assert tokenizer.decode(ids) == "Hello"


def test_counting_chat_tokens_equals_the_length_of_the_encoded_chat(tokenizer):
    for messages in (CONVERSATION, [{"role": "user", "content": "你好 👋 " * 7}]):
        count = tokenizer.count_chat_tokens(messages)
        assert count == len(tokenizer.encode_chat(messages))
        assert count == len(tokenizer.encode(tokenizer.apply_chat_template(messages)))
    assert tokenizer.count_chat_tokens([{"role": "user", "content": "Hello"}]) == 1 + 1 + len(tokenizer.encode("Hello")) + 1


def test_reasoning_content_never_reaches_the_template(tmp_path):
    tok = with_template(tmp_path, "{% for m in messages %}[{{ m.reasoning_content }}|{{ m.content }}]{% endfor %}")
    rendered = tok.apply_chat_template([{"role": "assistant", "content": "42", "reasoning_content": "secret"}])
    assert rendered == "[|42]"


def test_assistant_text_with_think_markers_renders_as_given(tokenizer):
    reply = f"{THINK_OPEN}add them{THINK_CLOSE}Five."
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "2+3?"},
                                              {"role": "assistant", "content": reply}],
                                             add_generation_prompt=False)
    assert rendered.endswith(f"{ASSISTANT}{reply}{EOS}")


def test_it_picks_the_default_of_named_templates(tmp_path):
    tok = with_template(tmp_path, [{"name": "tool_use", "template": "TOOLS"},
                                   {"name": "default", "template": "DEFAULT {{ bos_token }}"}])
    assert tok.apply_chat_template(CONVERSATION) == f"DEFAULT {BOS}"


def test_templates_get_the_usual_helpers(tmp_path):
    tok = with_template(tmp_path, "{{ messages | tojson }}|{{ eos_token }}|{{ add_generation_prompt }}"
                                  "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                                  "{% generation %}<{{ m.role }}>{% endgeneration %}{% endfor %}")
    rendered = tok.apply_chat_template([{"role": "user", "content": "<b>你</b>"}, {"role": "user", "content": "x"}])
    assert rendered == f'[{{"role": "user", "content": "<b>你</b>"}}, {{"role": "user", "content": "x"}}]|{EOS}|True<user>'


def test_raise_exception_becomes_a_clear_error(tokenizer):
    # (The demo template renders `tool` messages since it learnt tool tokens: an unknown role raises.)
    with pytest.raises(ChatTemplateError, match="unsupported message role: ipython"):
        tokenizer.apply_chat_template([{"role": "ipython", "content": "{}"}])


def test_a_template_that_does_not_compile_is_a_clear_error(tmp_path):
    tok = with_template(tmp_path, "{% for m in messages %}{{ m.content }}")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        tok.apply_chat_template(CONVERSATION)


def test_a_missing_template_is_a_clear_error(tmp_path):
    tok = Tokenizer.from_dir(make_checkpoint_dir(tmp_path, config_overrides={"chat_template": ...}))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template(CONVERSATION)


def test_a_template_in_chat_template_jinja_is_used(tmp_path):
    directory = make_checkpoint_dir(tmp_path, config_overrides={"chat_template": ...})
    (directory / "chat_template.jinja").write_text("FROM FILE", encoding="utf-8")
    assert Tokenizer.from_dir(directory).apply_chat_template(CONVERSATION) == "FROM FILE"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages | length }}",
    "{{ messages[0].update({'content': 'x'}) }}",
])
def test_the_sandbox_refuses_templates_that_reach_for_python_internals(tmp_path, template):
    tok = with_template(tmp_path, template)
    with pytest.raises(ChatTemplateError, match="refused by the sandbox"):
        tok.apply_chat_template(CONVERSATION)


@pytest.mark.parametrize("messages", [[{"content": "no role"}], ["just a string"],
                                      [{"role": "user", "content": ["a", "list"]}]])
def test_malformed_messages_are_a_clear_error(tokenizer, messages):
    with pytest.raises(ChatTemplateError, match="message 0"):
        tokenizer.apply_chat_template(messages)


# --- loading and caching ---------------------------------------------------------------------------


def test_from_dir_returns_the_cached_tokenizer_for_the_same_path(checkpoint_dir, tokenizer):
    assert Tokenizer.from_dir(checkpoint_dir) is tokenizer
    assert Tokenizer.from_dir(str(checkpoint_dir) + "/.") is tokenizer


def test_from_dir_reloads_after_the_checkpoint_changes(tmp_path):
    directory = make_checkpoint_dir(tmp_path)
    first = Tokenizer.from_dir(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = "CHANGED"
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    later = time.time() + 5
    os.utime(path, (later, later))
    second = Tokenizer.from_dir(directory)
    assert second is not first and second.apply_chat_template(CONVERSATION) == "CHANGED"


def test_a_directory_without_tokenizer_json_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json not found"):
        Tokenizer.from_dir(tmp_path)


# --- the web tier's constraint ------------------------------------------------------------------------


def test_importing_and_using_the_tokenizer_does_not_import_torch(checkpoint_dir):
    code = (
        "import sys\n"
        "from inference.tokenizer import Tokenizer, IncrementalDetokenizer\n"
        f"tok = Tokenizer.from_dir({str(checkpoint_dir)!r})\n"
        "ids = tok.encode_chat([{'role': 'user', 'content': 'Hello'}])\n"
        "detok = IncrementalDetokenizer(tok)\n"
        "text = ''.join(detok.push(i) for i in ids) + detok.flush()\n"
        "assert text == 'Hello', text\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy'))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_a_long_text_encodes_to_the_same_ids_through_the_gil_releasing_path(tokenizer):
    """Texts past _RELEASE_GIL_CHARS go through encode_batch (which lets other threads run): same ids."""
    from inference import tokenizer as module

    text = " ".join(ENGLISH + MIXED) * 3
    assert len(text) >= module._RELEASE_GIL_CHARS
    assert tokenizer.encode(text) == tokenizer._tok.encode(text, add_special_tokens=False).ids
