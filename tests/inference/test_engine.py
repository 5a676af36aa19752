"""The engine: continuous batching that changes nothing a request sees, sampling, stops, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference import load_model
from inference.engine import Engine, Request, SamplingParams
from tests.inference.checkpoints import DEVICE

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    return load_model(path, dtype=torch.float32, device=DEVICE)


class Letters:
    """Detokenizer stand-in: token i decodes to two letters, so strings span token boundaries."""

    def push(self, token_id: int) -> str:
        return piece(token_id)

    def flush(self) -> str:
        return ""


def piece(token_id: int) -> str:
    return "abcdefgh"[token_id % 8] + "xyz"[token_id % 3]


@pytest.fixture
def engine(model):
    eng = Engine(model, kv_budget_bytes=8 << 20, block_size=16, max_batch=32, detokenizer_factory=Letters).start()
    yield eng
    eng.stop()


def prompts(n: int, seed: int = 0, lo: int = 1, hi: int = 90) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(2, 97, (k,), generator=g).tolist() for k in lengths]


def run(engine, prompt, **params):
    return engine.submit(Request(prompt, SamplingParams(**params))).result(timeout=60)


@pytest.mark.parametrize("case", ["v3_grouped_yarn", "v2_lite"])
def test_greedy_decoding_matches_transformers_generate(checkpoint, case):
    path, ref = checkpoint(case)
    engine = Engine(load_model(path, dtype=torch.float32, device=DEVICE), kv_budget_bytes=8 << 20).start()
    for prompt in prompts(3, seed=5):
        with torch.no_grad():
            expected = ref.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
        assert len(expected) == 32
        assert run(engine, prompt, max_tokens=32, **GREEDY).token_ids == expected
    engine.stop()


def test_the_engine_runs_in_bfloat16(checkpoint):
    path, _ = checkpoint("v3_grouped_yarn")
    eng = Engine(load_model(path, dtype=torch.bfloat16, device=DEVICE), kv_budget_bytes=4 << 20).start()
    try:
        hs = [eng.submit(Request(p, SamplingParams(max_tokens=10, **GREEDY))) for p in prompts(3, seed=2)]
        hs.append(eng.submit(Request(prompts(1)[0], SamplingParams(max_tokens=10, temperature=0.8, seed=1))))
        done = [h.result(60) for h in hs]
        assert [d.finish_reason for d in done[:3]] == ["length"] * 3
        assert all(0 <= t < 97 for d in done for t in d.token_ids)
    finally:
        eng.stop()


class Collector(threading.Thread):
    """Drains a handle's events in the background, like a worker streaming them out."""

    def __init__(self, handle):
        super().__init__(daemon=True)
        self.handle, self.events, self.first = handle, [], threading.Event()
        self.first_at = self.done_at = None
        self.start()

    def run(self):
        for ev in self.handle:
            self.events.append(ev)
            if self.first_at is None:
                self.first_at = time.monotonic()
            self.first.set()
        self.done_at = time.monotonic()

    def tokens(self):
        self.join(timeout=60)
        return [t for ev in self.events for t in ev.token_ids]


def test_batching_is_invisible(engine):
    ps = prompts(16, seed=1)
    lengths = [8 + 3 * i for i in range(16)]  # requests leave at different steps
    kinds = [dict(GREEDY) if i % 4 else dict(temperature=0.9, top_p=0.9, seed=i, ignore_eos=True) for i in range(16)]
    alone = [run(engine, p, max_tokens=n, logprobs=True, **k) for p, n, k in zip(ps, lengths, kinds, strict=True)]
    steps_alone = engine.steps

    collectors = []
    for i, (p, n, k) in enumerate(zip(ps, lengths, kinds, strict=True)):
        h = engine.submit(Request(p, SamplingParams(max_tokens=n, logprobs=True, **k)))
        collectors.append(Collector(h))
        if i % 4 == 3:  # the next requests join a batch that is already decoding
            assert collectors[i].first.wait(timeout=30)
    for i, c in enumerate(collectors):
        assert c.tokens() == alone[i].token_ids, i
        lps = [lp for ev in c.events for lp in (ev.logprobs or [])]
        assert lps == pytest.approx(alone[i].logprobs, abs=1e-5)
        assert c.events[-1].finish_reason == "length"
        assert c.events[-1].usage.completion_tokens == lengths[i]
    assert engine.steps - steps_alone < sum(lengths) / 3, "requests did not actually share steps"


@pytest.mark.parametrize("case", ["v3_aligned", "v2_aligned"])
def test_a_sequence_computes_bit_for_bit_the_same_alone_and_among_batch_mates(checkpoint, case):
    """fp32 on CPU: the same logprobs to the last bit whether a greedy request runs alone or beside
    18 others of mixed lengths (1 to 400 prompt tokens: more decode splits than its own, a batch
    over 16 rows, mates joining and leaving); see "Batch invariance" in docs/inference.md."""
    path, _ = checkpoint(case)
    model = load_model(path, dtype=torch.float32, device=DEVICE)
    if DEVICE != "cpu":
        pytest.skip("bit-for-bit batch invariance is a CPU property (docs/inference.md)")
    lengths = (20, 300, 7, 150, 45, 400, 3, 90, 12, 33, 250, 5, 8, 70, 1, 2, 19, 64, 129)
    g = torch.Generator().manual_seed(4)
    ps = [torch.randint(2, 97, (n,), generator=g).tolist() for n in lengths]
    eng = Engine(model, kv_budget_bytes=16 << 20, max_batch=32).start()
    try:
        for target in (0, 5, 14):
            params = SamplingParams(max_tokens=60, logprobs=True, **GREEDY)
            alone = eng.submit(Request(ps[target], params)).result(60)
            handles = [eng.submit(Request(p, params if i == target else SamplingParams(max_tokens=5 + 4 * i, **GREEDY)))
                       for i, p in enumerate(ps)]
            among = handles[target].result(120)
            for i, h in enumerate(handles):
                if i != target:
                    h.result(120)
            assert among.token_ids == alone.token_ids, target
            assert among.logprobs == alone.logprobs, target  # exactly, not approximately
    finally:
        eng.stop()


# -- prefix cache ------------------------------------------------------------------------------


def shared_prefix_prompts():
    g = torch.Generator().manual_seed(11)
    prefix = torch.randint(2, 97, (256,), generator=g).tolist()
    return prefix, prefix + torch.randint(2, 97, (20,), generator=g).tolist(), \
        prefix + torch.randint(2, 97, (33,), generator=g).tolist()


def test_a_shared_prefix_is_reused_and_changes_nothing(model, engine):
    _, first, second = shared_prefix_prompts()
    cold_engine = Engine(model, kv_budget_bytes=8 << 20, block_size=16).start()
    try:
        cold = cold_engine.submit(Request(second, SamplingParams(max_tokens=16, logprobs=True, **GREEDY),
                                          user="alice")).result(timeout=60)
    finally:
        cold_engine.stop()
    assert cold.usage.prompt_cache_hit_tokens == 0

    a = engine.submit(Request(first, SamplingParams(max_tokens=4, **GREEDY), user="alice")).result(timeout=60)
    assert a.usage.prompt_cache_hit_tokens == 0 and a.usage.prompt_cache_miss_tokens == len(first)
    warm = engine.submit(Request(second, SamplingParams(max_tokens=16, logprobs=True, **GREEDY),
                                 user="alice")).result(timeout=60)
    assert warm.usage.prompt_cache_hit_tokens >= 192
    assert warm.usage.prompt_cache_hit_tokens + warm.usage.prompt_cache_miss_tokens == len(second)
    assert warm.token_ids == cold.token_ids
    assert warm.logprobs == pytest.approx(cold.logprobs, abs=1e-4)


def test_another_user_gets_no_hit_from_someone_elses_prefix(engine):
    _, first, second = shared_prefix_prompts()
    run_as = lambda user, p: engine.submit(Request(p, SamplingParams(max_tokens=2, **GREEDY), user=user)).result(60)  # noqa: E731
    run_as("alice", first)
    assert run_as("bob", second).usage.prompt_cache_hit_tokens == 0
    assert run_as(None, second).usage.prompt_cache_hit_tokens == 0
    assert run_as("alice", second).usage.prompt_cache_hit_tokens == 256


def test_a_finished_conversation_is_reusable_by_its_next_turn(engine):
    prompt = prompts(1, seed=4, lo=70, hi=71)[0]
    a = engine.submit(Request(prompt, SamplingParams(max_tokens=80, **GREEDY), user="carol")).result(60)
    next_turn = prompt + a.token_ids + [5, 6, 7]
    b = engine.submit(Request(next_turn, SamplingParams(max_tokens=2, **GREEDY), user="carol")).result(60)
    assert b.usage.prompt_cache_hit_tokens == 128  # 70 + 79 computed tokens = two full 64-token units


def test_unreferenced_prefixes_are_evicted_when_memory_is_needed(model):
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 24, block_size=16).start()  # 24 blocks
    try:
        for user in ("u1", "u2", "u3"):  # each leaves 2 units (8 blocks) cached
            p = prompts(1, seed=hash(user) % 100, lo=140, hi=141)[0]
            eng.submit(Request(p, SamplingParams(max_tokens=4, **GREEDY), user=user)).result(60)
        assert eng.cache.evictable_blocks > 0
        big = prompts(1, seed=9, lo=300, hi=301)[0]  # needs 19 blocks: only possible by evicting
        assert eng.submit(Request(big, SamplingParams(max_tokens=4, **GREEDY))).result(60).finish_reason == "length"
    finally:
        eng.stop()


def KV_BYTES_PER_TOKEN(model):  # noqa: N802
    a = model.args
    return a.num_hidden_layers * a.latent_dim * 4


# -- admission under a full cache --------------------------------------------------------------


def test_admission_waits_while_the_cache_is_full_then_proceeds(model):
    # 12 blocks; each request needs ceil((40 + 60 - 1) / 16) = 7, so only one fits at a time.
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 12, block_size=16).start()
    try:
        ps = prompts(3, seed=6, lo=40, hi=41)
        alone = [run(eng, p, max_tokens=60, **GREEDY).token_ids for p in ps]
        cs = [Collector(eng.submit(Request(p, SamplingParams(max_tokens=60, **GREEDY)))) for p in ps]
        for c in cs:
            c.join(timeout=60)
        assert [c.tokens() for c in cs] == alone
        # The second request started only after the first had finished: its first event came later.
        first_done = cs[0].done_at
        assert cs[1].first_at >= first_done and cs[2].first_at >= cs[1].done_at
    finally:
        eng.stop()


def test_a_request_that_can_never_fit_is_refused_at_submit(model):
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 4, block_size=16)
    with pytest.raises(ValueError, match="cannot fit the KV cache"):
        eng.submit(Request([3] * 40, SamplingParams(max_tokens=40)))


# -- sampling ----------------------------------------------------------------------------------


def test_stop_strings_match_across_token_boundaries(engine):
    prompt = prompts(1, seed=2)[0]
    free = run(engine, prompt, max_tokens=12, **GREEDY)
    text = "".join(piece(t) for t in free.token_ids)
    assert free.text == text
    stop = text[7:9]  # last letter of token 3, first letter of token 4
    cut = text.find(stop)
    stopped = run(engine, prompt, max_tokens=12, stop=[stop, "never"], **GREEDY)
    assert stopped.finish_reason == "stop"
    assert stopped.text == text[:cut]
    assert stop not in stopped.text
    assert stopped.usage.completion_tokens == (cut + len(stop) + 1) // 2
    assert stopped.stop_sequence == stop  # which one ended it (the Anthropic API reports it)
    assert free.stop_sequence is None


def test_the_earliest_stop_string_in_the_text_is_the_one_reported(engine):
    prompt = prompts(1, seed=2)[0]
    text = run(engine, prompt, max_tokens=12, **GREEDY).text
    early, late = text[2:4], text[8:10]
    assert text.find(early) < text.find(late)
    stopped = run(engine, prompt, max_tokens=12, stop=[late, early], **GREEDY)
    assert stopped.stop_sequence == early and stopped.text == text[: text.find(early)]


def test_text_held_back_for_a_possible_stop_string_is_released_at_the_end(engine):
    prompt = prompts(1, seed=2)[0]
    free = run(engine, prompt, max_tokens=12, **GREEDY)
    text = free.text
    almost = text[-2:] + "#"  # the output ends with this stop string's beginning, never the whole
    got = run(engine, prompt, max_tokens=12, stop=[almost], **GREEDY)
    assert got.finish_reason == "length" and got.text == text


def test_text_and_stop_strings_are_made_off_the_scheduler_thread(model):
    """The scheduler's step never decodes: it queues token events for the text thread, which
    detokenizes, matches stop strings and emits; a match there ends the request and the scheduler
    frees its sequence at its next step."""
    calls: list[str] = []

    class Recording(Letters):
        def push(self, token_id: int) -> str:
            calls.append(threading.current_thread().name)
            return super().push(token_id)

    eng = Engine(model, kv_budget_bytes=8 << 20, detokenizer_factory=Recording)
    prompt = prompts(1, seed=2)[0]
    handle = eng.submit(Request(prompt, SamplingParams(max_tokens=12, **GREEDY)))
    with torch.inference_mode():  # drive the scheduler by hand, on this thread, text thread not started
        eng._waiting.extend(eng._incoming)
        eng._incoming.clear()
        eng._admit()
        for _ in range(12):
            eng._step()
    assert calls == [] and handle.get(timeout=0) is None  # 12 tokens sampled, nothing decoded or emitted
    eng._text.start()
    eng._text.stop()  # emits what was queued, then ends
    done = handle.result(timeout=5)
    assert done.text == "".join(piece(t) for t in done.token_ids) and done.finish_reason == "length"
    assert calls and set(calls) == {"levee-text"}

    calls.clear()
    eng = Engine(model, kv_budget_bytes=8 << 20, detokenizer_factory=Recording).start()
    try:
        stopped = run(eng, prompt, max_tokens=40, stop=[done.text[7:9]], **GREEDY)
        assert stopped.finish_reason == "stop" and stopped.text == done.text[:done.text.find(done.text[7:9])]
        deadline = time.monotonic() + 5
        while eng.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.stats()["running"] == 0 and eng.stats()["free_blocks"] == eng.cache.num_blocks
        assert eng.stats()["generated_tokens"] < 40  # freed soon after the match, not run to max_tokens
    finally:
        eng.stop()
    assert set(calls) == {"levee-text"}


def test_a_stop_token_ends_generation_and_is_counted_but_not_shown(engine):
    prompt = prompts(1, seed=3)[0]
    free = run(engine, prompt, max_tokens=12, **GREEDY)
    target = free.token_ids[5]
    k = free.token_ids.index(target)
    got = run(engine, prompt, max_tokens=12, stop_token_ids=[target], **GREEDY)
    assert got.finish_reason == "stop"
    assert got.token_ids == free.token_ids[:k]
    assert got.usage.completion_tokens == k + 1


def test_a_seed_reproduces_a_sample_alone_or_in_a_batch(engine):
    prompt = prompts(1, seed=8)[0]
    params = dict(max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True)
    a = run(engine, prompt, **params).token_ids
    noise = [engine.submit(Request(p, SamplingParams(max_tokens=20, temperature=1.0, ignore_eos=True)))
             for p in prompts(6, seed=9)]
    b = run(engine, prompt, **params).token_ids
    for h in noise:
        h.result(60)
    c = run(engine, prompt, **(params | {"seed": 4321})).token_ids
    assert a == b
    assert a != c


def test_top_p_keeps_sampling_inside_the_nucleus(engine):
    prompt = prompts(1, seed=8)[0]
    greedy = run(engine, prompt, max_tokens=1, **GREEDY).token_ids
    tiny_p = [run(engine, prompt, max_tokens=1, temperature=1.5, top_p=1e-6, seed=s).token_ids for s in range(8)]
    assert all(t == greedy for t in tiny_p)
    wide = {tuple(run(engine, prompt, max_tokens=1, temperature=1.5, seed=s).token_ids) for s in range(8)}
    assert len(wide) > 1


def test_penalties_push_the_distribution_as_expected(engine):
    prompt = prompts(1, seed=12)[0]
    plain = run(engine, prompt, max_tokens=40, **GREEDY).token_ids
    assert len(set(plain)) < len(plain), "greedy output must repeat for this test to mean anything"
    freq = run(engine, prompt, max_tokens=40, frequency_penalty=50.0, **GREEDY).token_ids
    pres = run(engine, prompt, max_tokens=40, presence_penalty=50.0, **GREEDY).token_ids
    assert len(set(freq)) == len(freq) and len(set(pres)) == len(pres)  # nothing said twice
    assert freq[0] == plain[0]  # nothing generated yet, nothing penalised
    # A negative presence penalty rewards what was already said: the first token repeats.
    sticky = run(engine, prompt, max_tokens=10, presence_penalty=-50.0, **GREEDY).token_ids
    assert sticky == [plain[0]] * 10
    # Sampled: a mild frequency penalty lowers the repetition rate.
    def repeats(**kw):
        n = 0
        for s in range(6):
            t = run(engine, prompt, max_tokens=30, temperature=1.0, seed=s, ignore_eos=True, **kw).token_ids
            n += len(t) - len(set(t))
        return n
    assert repeats(frequency_penalty=2.0) < repeats()


# -- cancellation, deadlines, length -----------------------------------------------------------


def test_a_running_request_can_be_cancelled_and_frees_its_blocks(engine):
    free_before = engine.cache.available()
    h = engine.submit(Request(prompts(1)[0], SamplingParams(max_tokens=400, **GREEDY)))
    got = [h.get(timeout=30), h.get(timeout=30)]
    h.cancel()
    rest = list(h)
    assert rest[-1].finish_reason == "cancelled"
    assert 2 <= rest[-1].usage.completion_tokens < 400
    assert all(ev.finish_reason is None for ev in got + rest[:-1])
    deadline = time.time() + 10
    while engine.stats()["running"] and time.time() < deadline:
        time.sleep(0.01)
    assert engine.cache.available() == free_before


def test_a_waiting_request_can_be_cancelled(model):
    eng = Engine(model, kv_budget_bytes=KV_BYTES_PER_TOKEN(model) * 16 * 12, block_size=16).start()
    try:
        blocker = eng.submit(Request([5] * 40, SamplingParams(max_tokens=150, **GREEDY)))
        assert blocker.get(timeout=30) is not None
        waiting = eng.submit(Request([6] * 40, SamplingParams(max_tokens=100, **GREEDY)))
        waiting.cancel()
        ev = waiting.get(timeout=30)
        assert ev.finish_reason == "cancelled" and ev.usage.completion_tokens == 0
        assert blocker.result(60).finish_reason == "length"
    finally:
        eng.stop()


def test_a_request_past_its_deadline_is_cancelled(engine):
    h = engine.submit(Request([4] * 10, SamplingParams(max_tokens=10_000, **GREEDY), deadline=time.time() + 0.3))
    done = h.result(timeout=30)
    assert done.finish_reason == "cancelled"
    assert 0 < done.usage.completion_tokens < 10_000


def test_stopping_the_engine_cancels_what_is_in_flight(model):
    eng = Engine(model, kv_budget_bytes=8 << 20).start()
    h = eng.submit(Request([4] * 10, SamplingParams(max_tokens=10_000, **GREEDY)))
    h.get(timeout=30)
    eng.stop()
    assert h.result(timeout=5).finish_reason == "cancelled"


def test_chunked_prefill_attention_and_a_small_step_budget_change_nothing(model, engine):
    ps = prompts(4, seed=13, lo=60, hi=120)
    expected = [run(engine, p, max_tokens=12, **GREEDY).token_ids for p in ps]
    small = Engine(model, kv_budget_bytes=8 << 20, max_step_tokens=100, prefill_query_chunk=7).start()
    try:
        hs = [small.submit(Request(p, SamplingParams(max_tokens=12, **GREEDY))) for p in ps]
        assert [h.result(60).token_ids for h in hs] == expected
    finally:
        small.stop()


def test_a_stopped_engine_refuses_new_requests(model):
    eng = Engine(model, kv_budget_bytes=1 << 20).start()
    eng.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        eng.submit(Request([3, 4], SamplingParams(max_tokens=2)))


def test_every_event_carries_the_running_usage(engine):
    _, first, second = shared_prefix_prompts()
    engine.submit(Request(first, SamplingParams(max_tokens=2, **GREEDY), user="dave")).result(60)
    h = engine.submit(Request(second, SamplingParams(max_tokens=5, **GREEDY), user="dave"))
    events = list(h)
    assert [ev.usage.completion_tokens for ev in events] == [1, 2, 3, 4, 5]
    assert all(ev.usage.prompt_cache_hit_tokens == 256 for ev in events)


def test_a_failing_step_ends_its_requests_with_an_error_and_the_engine_keeps_serving(model, monkeypatch):
    eng = Engine(model, kv_budget_bytes=8 << 20).start()
    try:
        real = model.hidden_states
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("device fell over")
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "hidden_states", flaky)
        broken = eng.submit(Request([3, 4, 5], SamplingParams(max_tokens=20, **GREEDY))).result(60)
        assert broken.finish_reason == "error" and broken.usage.completion_tokens == 1
        assert broken.error == "RuntimeError: device fell over"
        monkeypatch.setattr(model, "hidden_states", real)
        assert eng.submit(Request([3, 4, 5], SamplingParams(max_tokens=3, **GREEDY))).result(60).finish_reason == "length"
        assert eng.cache.available() == eng.cache.num_blocks
    finally:
        eng.stop()


def test_top_k_min_p_and_top_logprobs_reach_the_engine_sampler(engine):
    prompt = prompts(1, seed=8)[0]
    greedy = run(engine, prompt, max_tokens=4, **GREEDY).token_ids
    assert all(run(engine, prompt, max_tokens=4, temperature=1.5, top_k=1, seed=s, ignore_eos=True).token_ids == greedy
               for s in range(4))
    assert all(run(engine, prompt, max_tokens=4, temperature=1.5, min_p=1.0, seed=s, ignore_eos=True).token_ids
               == greedy for s in range(4))
    done = run(engine, prompt, max_tokens=3, top_logprobs=2, logprobs=True, **GREEDY)
    assert done.top_logprobs is not None and [len(t) for t in done.top_logprobs] == [2, 2, 2]
    assert [t[0][0] for t in done.top_logprobs] == done.token_ids  # greedy takes the most likely
    assert done.logprobs == pytest.approx([t[0][1] for t in done.top_logprobs], abs=1e-6)
    for bad in (dict(top_k=-1), dict(min_p=1.5), dict(top_logprobs=-2)):
        with pytest.raises(ValueError):
            engine.submit(Request(prompt, SamplingParams(**bad)))
