"""Constrained sampling (inference.grammar) inside the engine: each constrained sequence of a batch
follows its own grammar, unconstrained neighbours are untouched, a trigger token switches a grammar
on, and logprobs come from the same logits in OpenAI's shape."""
from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path

import pytest
import torch

from inference import protocol, serving
from inference.tokenizer import Tokenizer

CKPT = Path(__file__).resolve().parents[2] / "inference" / "demo" / "checkpoint"
# Schemas whose every valid value is short: the grammar alone decides that the output ends.
FLAG = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
        "additionalProperties": False}


def _schema_grammar(schema: dict) -> str:
    return "start: obj\nobj: %json " + json.dumps({**schema, "x-guidance": {"whitespace_flexible": False}})


@pytest.fixture(scope="module")
def engine():
    built = serving.build_engine(str(CKPT))
    yield built
    built.stop()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(CKPT)


def _submit(engine, ids, *, constraint=None, logprobs=None, max_tokens=40, temperature=0.0, sink=None):
    message = protocol.JobMessage(job_id=uuid.uuid4().hex, model="m", prompt_ids=ids, user="u", hold_id=None,
                                  deadline=time.time() + 120, pickup_deadline=time.time() + 60,
                                  constraint=constraint, logprobs=logprobs,
                                  sampling=protocol.Sampling(max_tokens=max_tokens, temperature=temperature, seed=7))
    return serving.submit(engine, message, sink)


def _collect(engine, sink: queue.SimpleQueue, n: int) -> dict[str, tuple[str, str, list]]:
    out: dict[str, list] = {}
    done: dict[str, tuple[str, str, list]] = {}
    while len(done) < n:
        handle, event = sink.get(timeout=120)
        ev = serving.job_event(event, engine)
        text, lps = out.setdefault(handle.request_id, ["", []]), None
        text[0] += ev.text
        text[1] += ev.logprobs
        if event.finish_reason is not None:
            done[handle.request_id] = (text[0], event.finish_reason, text[1])
        del lps
    return done


def test_constrained_and_free_sequences_share_a_batch_and_each_follows_its_own_rule(engine, tok):
    ids = tok.encode_chat([{"role": "user", "content": "Answer in JSON: is the sky blue?"}])
    sink: queue.SimpleQueue = queue.SimpleQueue()
    flag = _submit(engine, ids, constraint=protocol.Constraint(_schema_grammar(FLAG)), sink=sink, temperature=1.0)
    city = _submit(engine, ids, constraint=protocol.Constraint(_schema_grammar(CITY)), sink=sink, temperature=1.0)
    free = _submit(engine, ids, sink=sink, max_tokens=12)
    done = _collect(engine, sink, 3)
    flag_text, flag_reason, _ = done[flag.request_id]
    city_text, city_reason, _ = done[city.request_id]
    assert flag_reason == city_reason == "stop"
    assert isinstance(json.loads(flag_text)["ok"], bool) and set(json.loads(flag_text)) == {"ok"}
    assert json.loads(city_text)["city"] in {"Paris", "Rome"}
    alone = _submit(engine, ids, max_tokens=12).result(120)
    assert done[free.request_id][0] == alone.text  # the neighbours' grammars left it alone


def test_a_trigger_token_switches_the_grammar_on_after_it(tok):
    import torch

    from inference.grammar import BatchMasker, SequenceConstraint, ll_tokenizer

    ll = ll_tokenizer((CKPT / "tokenizer.json").read_text(encoding="utf-8"), 2112, tok.eos_token_id)
    close = tok.token_to_id("</think>")
    constraint = SequenceConstraint.compile(ll, _schema_grammar(FLAG), trigger=close)
    masker = BatchMasker(2112)
    word = tok.encode("Hello")[0]
    assert masker.begin([constraint]) is None  # free before the trigger: no mask at all
    constraint.advance(word)
    assert not constraint.masking
    constraint.advance(close)
    logits = torch.zeros(2, 2112)
    masker.apply(masker.begin([None, constraint]), logits)
    allowed = (logits[1] > float("-inf")).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([i]).startswith("{") for i in allowed)  # the object must open
    assert bool((logits[0] == 0).all())  # the free row is untouched


def test_logprobs_and_top_logprobs_come_in_openais_shape(engine, tok):
    ids = tok.encode_chat([{"role": "user", "content": "Hello"}])
    sink: queue.SimpleQueue = queue.SimpleQueue()
    handle = _submit(engine, ids, logprobs=3, max_tokens=6, sink=sink)
    text, _, lps = _collect(engine, sink, 1)[handle.request_id]
    assert 1 <= len(lps) <= 6
    for entry in lps:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-5  # greedy: the top one was chosen
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]
    assert b"".join(bytes(e["bytes"]) for e in lps).decode("utf-8", errors="replace").startswith(text[:1])


def test_a_grammar_that_does_not_compile_is_refused_at_submit(engine, tok):
    from inference.grammar import GrammarError

    with pytest.raises(GrammarError):
        _submit(engine, [1, 2, 3], constraint=protocol.Constraint("start: nope nope ("))


# -- preemption: a resumed sequence keeps its grammar state ---------------------------------------

CITIES = {"type": "object", "properties": {"cities": {"type": "array", "items": {"enum": ["Paris", "Rome", "Oslo"]},
                                                      "minItems": 10, "maxItems": 10}},
          "required": ["cities"], "additionalProperties": False}


def _run_constrained(model, tok, prompts, *, kv_tokens, seeded):
    """Each prompt under the CITIES grammar on its own engine of `kv_tokens` KV slots (reserve 0:
    admitted on their prompts, preempted by recompute as the outputs grow). (results, preemptions)."""
    from inference.engine import Engine, Request, SamplingParams
    from inference.grammar import SequenceConstraint, ll_tokenizer
    from inference.tokenizer import IncrementalDetokenizer
    from tests.inference.test_engine import KV_BYTES_PER_TOKEN

    ll = ll_tokenizer((CKPT / "tokenizer.json").read_text(encoding="utf-8"), model.args.vocab_size,
                      tok.eos_token_id)
    eng = Engine(model, kv_budget_bytes=kv_tokens * KV_BYTES_PER_TOKEN(model), block_size=16, reserve_fraction=0.0,
                 detokenizer_factory=lambda: IncrementalDetokenizer(tok)).start()
    try:
        handles = [eng.submit(Request(list(p), SamplingParams(max_tokens=120, temperature=1.0 if seeded else 0.0,
                                                              seed=i if seeded else None),
                                      constraint=SequenceConstraint.compile(ll, _schema_grammar(CITIES))))
                   for i, p in enumerate(prompts)]
        done = [h.result(300) for h in handles]
        return done, eng.stats()["preemptions"]
    finally:
        eng.stop()


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_a_preempted_constrained_sequence_resumes_its_grammar_where_it_was(tok, seeded):
    """Preemption frees a sequence's KV cache and recomputes its context later; its matcher is the
    request's, kept through it (not replayed, not restarted), so the resumed sequence's masks follow
    on from the tokens it had sampled: the same output as on an engine with room, valid to the end."""
    from inference import load_model

    model = load_model(str(CKPT), dtype=torch.float32, device="cpu")
    questions = ["List ten cities.", "Name some cities in JSON.", "Cities, please.", "Where could I travel?"]
    prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in questions]
    roomy, none = _run_constrained(model, tok, prompts, kv_tokens=4096, seeded=seeded)
    tight, preempted = _run_constrained(model, tok, prompts, kv_tokens=16 * 16, seeded=seeded)
    assert none == 0 and preempted > 0
    assert [d.token_ids for d in tight] == [d.token_ids for d in roomy]
    for d in tight:
        assert d.finish_reason == "stop", d.text
        value = json.loads(d.text)
        assert len(value["cities"]) == 10 and set(value["cities"]) <= {"Paris", "Rome", "Oslo"}


# -- a JSON value closed within max_tokens ------------------------------------------------------


def _random_json(rng, depth=0):
    kind = rng.choice(["obj", "arr", "str", "num", "lit"] if depth < 3 else ["str", "num", "lit"])
    if kind == "obj":
        return {rng.choice(["a", "bé", 'q"\\', "k\n", ""]) + str(i): _random_json(rng, depth + 1)
                for i in range(rng.randint(0, 3))}
    if kind == "arr":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "str":
        return rng.choice(["", "x", "é€", "a\"b", "\\", "\u0001", "tab\there"])
    if kind == "num":
        return rng.choice([0, -1, 12, 3.5, -0.25, 1e21, 2.5e-7])
    return rng.choice([True, False, None])


def test_every_prefix_of_a_json_object_has_a_shortest_completion_that_parses():
    import random

    from inference.grammar import JsonTail

    rng = random.Random(5)
    for _ in range(300):
        raw = json.dumps({"v": _random_json(rng)}, ensure_ascii=False, separators=(",", ":")).encode()
        for cut in range(len(raw) + 1):  # bytes, as tokens cut them (a character may be cut in two)
            tail = JsonTail()
            tail.feed(raw[:cut].decode("latin-1"))  # as the engine feeds it
            completion = tail.completion()
            assert completion is not None, raw[:cut]
            whole = (raw[:cut] + completion.encode()).decode("utf-8", errors="replace")
            assert isinstance(json.loads(whole), dict), whole
        assert tail.completion() == ""  # the whole text needs nothing
    lost = JsonTail()
    lost.feed("{x")
    assert lost.completion() is None


def _json_object_grammar():
    from levee.api.tools import json_object_grammar  # the grammar the API sends for json_object

    return json_object_grammar()


def test_a_json_object_answer_is_closed_within_max_tokens(engine, tok):
    """The demo model rarely closes free-form JSON by itself; with `json_value` the engine closes it in
    the tokens max_tokens leaves, sampled or greedy, down to the tokens of `{}` (two in the demo's
    vocabulary; one token can only be `{`)."""
    sink: queue.SimpleQueue = queue.SimpleQueue()
    runs = {}
    for question in ("What is Levee?", "Tell me a short story. Answer in JSON."):
        ids = tok.encode_chat([{"role": "user", "content": question}])
        for max_tokens in (2, 3, 5, 8, 13, 21, 34, 60):
            for temperature in (0.0, 1.0):
                for closed in (True, False):
                    handle = _submit(engine, ids, max_tokens=max_tokens, temperature=temperature, sink=sink,
                                     constraint=protocol.Constraint(_json_object_grammar(), json_value=closed))
                    runs[handle.request_id] = (max_tokens, closed)
    done = _collect(engine, sink, len(runs))
    unclosed_valid = []
    for job, (text, reason, _) in done.items():
        max_tokens, closed = runs[job]
        assert reason in {"stop", "length"}
        try:
            value = json.loads(text)
        except ValueError:
            assert not closed, (max_tokens, text)
            unclosed_valid.append(False)
            continue
        assert isinstance(value, dict)
        if not closed:
            unclosed_valid.append(True)
    assert not all(unclosed_valid)  # without it, some answers are cut open: the closing is what holds


def _calls_setup(tok):
    from levee.api import tools as toolkit

    ids = {n: tok.token_to_id(n) for n in (toolkit.CALLS_BEGIN, toolkit.CALLS_END, toolkit.CALL_BEGIN,
                                           toolkit.CALL_END, toolkit.SEP)}
    city = toolkit.Tool("get_weather", "Get the current weather in a city.", CITY)
    flag = toolkit.Tool("check", "Check a flag.", FLAG)
    grammar = toolkit.call_grammar([city, flag], family=toolkit.family_of(tok.chat_template), token_ids=ids)
    prompt = tok.encode_chat([{"role": "user", "content": "What is the weather in Paris and in Rome?"}],
                             tools=[city.as_openai(), flag.as_openai()])
    return ids, grammar, prompt, [ids[toolkit.CALL_BEGIN], ids[toolkit.CALL_END], ids[toolkit.CALLS_END]]


def test_several_calls_end_before_a_call_that_would_not_fit(tok):
    from inference.grammar import SequenceConstraint, ll_tokenizer

    ids, grammar, _prompt, calls = _calls_setup(tok)
    ll = ll_tokenizer((CKPT / "tokenizer.json").read_text(encoding="utf-8"), 2112, tok.eos_token_id)
    constraint = SequenceConstraint.compile(ll, grammar, calls=tuple(calls))
    call = [calls[0], *ll.tokenize_str("get_weather"), tok.token_to_id("<｜tool▁sep｜>"),
            *ll.tokenize_str('{"city":"Rome"}'), calls[1]]
    assert constraint.matcher.validate_tokens([tok.token_to_id("<｜tool▁calls▁begin｜>"), *call]) == len(call) + 1
    for t in [tok.token_to_id("<｜tool▁calls▁begin｜>"), *call]:
        assert constraint.forced(100) is None  # room: the model chooses
        constraint.advance(t)
    assert constraint.forced(len(call) + 2) is None  # another call like it, the end and eos still fit
    assert constraint.forced(len(call) + 1) == calls[2]  # they would not: the block ends now


def test_a_model_that_keeps_calling_still_ends_its_calls_within_max_tokens(engine, tok):
    _ids, grammar, prompt, calls = _calls_setup(tok)
    sink: queue.SimpleQueue = queue.SimpleQueue()
    runs = {}
    for max_tokens in (30, 45, 60, 80):
        for temperature in (0.0, 1.0):
            handle = _submit(engine, prompt, max_tokens=max_tokens, temperature=temperature, sink=sink,
                             constraint=protocol.Constraint(grammar, calls=calls))
            runs[handle.request_id] = max_tokens
    for job, (text, reason, _) in _collect(engine, sink, len(runs)).items():
        assert reason == "stop" and text.endswith("<｜tool▁calls▁end｜>"), (runs[job], reason, text)
