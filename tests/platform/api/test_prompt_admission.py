"""A prompt meets its limits before the tokenizer: one that cannot fit is refused untokenized, a
caller over its limits is refused untokenized, and a long one is tokenized without stopping the web
process's event loop."""
import asyncio
import json
import threading

import httpx
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as hf_models
from tokenizers import pre_tokenizers

from inference.demo.tokenizer_build import ASSISTANT, BOS, EOS, USER
from inference.tokenizer import Tokenizer
from levee.api import views
from levee.api.models import LlmModel
from levee.keys.services import create_api_key
from tests.personas import make_user

pytestmark = pytest.mark.django_db(transaction=True)
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}" + USER
            + "{{ m['content'] }}{% else %}" + ASSISTANT + "{{ m['content'] }}" + EOS
            + "{% endif %}{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")


@pytest.fixture
def api_key(seeded_catalogue):
    user = make_user("tokens@example.com")
    _, raw = create_api_key(user, name="t")
    return raw


@pytest.fixture
def tokenize_calls(monkeypatch):
    calls = []
    real = views._plan  # renders the template and tokenizes the prompt
    monkeypatch.setattr(views, "_plan", lambda model, chat, beta: calls.append(1) or real(model, chat, beta))
    return calls


def _post(raw, body, path="/v1/chat/completions"):
    from django.test import Client

    return Client().post(path, json.dumps(body), content_type="application/json",
                         headers={"Authorization": f"Bearer {raw}"})


@pytest.fixture
def encoded(monkeypatch):
    """The lengths of the texts the tokenizer encoded (every door's prompt goes through encode)."""
    lengths = []
    real = Tokenizer.encode
    monkeypatch.setattr(Tokenizer, "encode", lambda self, text, **kw: lengths.append(len(text)) or real(self, text, **kw))
    return lengths


# Every API door, with a prompt of `text`: chat, FIM (prompt and suffix), Anthropic's messages and count_tokens.
DOORS = {
    "chat": ("/v1/chat/completions", lambda text: {"model": "deepseek-chat", "max_tokens": 5,
                                                   "messages": [{"role": "user", "content": text}]}),
    "fim": ("/beta/completions", lambda text: {"model": "deepseek-chat", "max_tokens": 5,
                                               "prompt": text[: len(text) // 2], "suffix": text[len(text) // 2:]}),
    "anthropic": ("/anthropic/v1/messages", lambda text: {"model": "deepseek-chat", "max_tokens": 5,
                                                          "messages": [{"role": "user", "content": text}]}),
    "count_tokens": ("/anthropic/v1/messages/count_tokens",
                     lambda text: {"model": "deepseek-chat", "messages": [{"role": "user", "content": text}]}),
}


@pytest.mark.parametrize("door", DOORS)
def test_every_door_refuses_a_prompt_that_cannot_fit_before_tokenizing_it(api_key, encoded, door):
    path, body = DOORS[door]
    model = LlmModel.objects.get(name="deepseek-chat")
    response = _post(api_key, body("x" * (model.context_length * model.prompt_chars_per_token + 1)), path)
    assert response.status_code == 400, response.content[:300]
    assert "maximum context length" in response.content.decode()
    assert not [n for n in encoded if n > 1000]


@pytest.mark.parametrize("door", DOORS)
def test_every_door_refuses_a_caller_over_its_limits_before_tokenizing(api_key, encoded, settings, door):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS,
                              "api.key": {**settings.SHIELD_LIMITS["api.key"], "requests": (1, 60)}}
    path, body = DOORS[door]
    first = _post(api_key, body("hello " * 1000), path)
    assert first.status_code != 429 and len([n for n in encoded if n > 1000]) == 1, first.content[:300]
    second = _post(api_key, body("hello " * 1000), path)
    assert second.status_code == 429 and len([n for n in encoded if n > 1000]) == 1


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(api_key, tokenize_calls):
    model = LlmModel.objects.get(name="deepseek-chat")
    too_long = "x" * (model.context_length * model.prompt_chars_per_token + 1)
    response = _post(api_key, {"model": "deepseek-chat", "messages": [{"role": "user", "content": too_long}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert not tokenize_calls


def test_a_caller_over_its_limits_is_refused_before_its_prompt_is_tokenized(api_key, tokenize_calls, settings):
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS,
                              "api.key": {**settings.SHIELD_LIMITS["api.key"], "requests": (1, 60)}}
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello " * 1000}]}
    first = _post(api_key, body)
    assert first.status_code != 429 and len(tokenize_calls) == 1
    second = _post(api_key, body)
    assert second.status_code == 429 and len(tokenize_calls) == 1


def _word_tokenizer(directory) -> None:
    """A whole-word tokenizer: fast enough to encode 4 MB in a test, and with the same GIL
    behaviour as any `tokenizers` model."""
    vocab = {"[UNK]": 0, BOS: 1, EOS: 2, USER: 3, ASSISTANT: 4, "levee": 5, "river": 6}
    hf = HFTokenizer(hf_models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens([BOS, EOS, USER, ASSISTANT])
    hf.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "bos_token": BOS, "eos_token": EOS}, ensure_ascii=False))


def test_the_event_loop_answers_while_a_4mb_prompt_is_tokenized(api_key, tmp_path, monkeypatch, settings):
    """The API runs on the real ASGI application; while a 4 MB prompt is being encoded (in the
    tokenizer, between `started` and `finished`), /healthz is answered on the same event loop."""
    from levee.asgi import application

    _word_tokenizer(tmp_path)
    LlmModel.objects.filter(name="deepseek-chat").update(tokenizer_dir=str(tmp_path), context_length=1_000_000)
    settings.SHIELD_LIMITS = {**settings.SHIELD_LIMITS,
                              "api.key": {**settings.SHIELD_LIMITS["api.key"], "tokens": (10**9, 60)},
                              "api.account": {**settings.SHIELD_LIMITS["api.account"], "tokens": (10**9, 60)}}
    started, finished = threading.Event(), threading.Event()
    real_encode = Tokenizer.encode

    def observed_encode(self, text, **kwargs):
        started.set()
        try:
            return real_encode(self, text, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(Tokenizer, "encode", observed_encode)
    prompt = ("levee river " * 400_000)[:4_000_000]  # 4 MB: within the default body limit (4 MiB)
    body = json.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": prompt}]})

    async def scenario():
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            completion = asyncio.create_task(http.post("/v1/chat/completions", content=body, headers={
                "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}))
            while not started.is_set():
                assert not completion.done(), (await completion).text
                await asyncio.sleep(0.001)
            health = await http.get("/healthz")
            answered_during_encoding = not finished.is_set()
            response = await completion
            return health, answered_during_encoding, response

    health, answered_during_encoding, response = asyncio.run(scenario())
    assert health.status_code == 200
    assert answered_during_encoding, "/healthz waited for the tokenizer"
    assert finished.is_set() and response.status_code != 500, response.text[:300]
