"""The one reader of job event streams (levee.api.reader): raw protocol events in, typed events out,
the same for the live stream and for a stream replayed after its reader was lost."""
import asyncio
import uuid
from contextlib import aclosing

import pytest

from inference import protocol
from levee.api import jobs
from levee.api.reader import Done, Failed, JobReader, Keepalive, Text
from levee.api.think import ThinkSplitter

PIECES = ["<thi", "nk>\nLet me", " think.</th", "ink>\n\nIt is", " 4."]


def _entries(pieces, end):
    out = [(b"0-%d" % i, protocol.encode_event(protocol.DELTA, text=p, usage=protocol.usage_dict(0, 3, i + 1)))
           for i, p in enumerate(pieces)]
    return out + [(b"0-99", end)]


def test_a_replayed_stream_gives_typed_text_then_done_with_the_usage_of_the_end():
    reader = JobReader("j", prompt_tokens=3, reasoner=True)
    end = protocol.encode_event(protocol.DONE, finish_reason="length", usage=protocol.usage_dict(1, 2, 9))
    events = list(reader.replay(_entries(PIECES, end)))
    assert all(isinstance(e, Text) for e in events[:-1]) and isinstance(events[-1], Done)
    assert "".join(e.raw for e in events[:-1]) == "".join(PIECES)
    assert (events[-1].finish_reason, events[-1].usage["completion_tokens"]) == ("length", 9)
    assert (reader.reasoning_text, reader.text) == ("Let me think.", "It is 4.")
    assert reader.usage == protocol.usage_dict(1, 2, 9)


@pytest.mark.parametrize(("reason", "sent", "read"), [("stop", "END", "END"), ("stop", None, None),
                                                      ("length", "END", None), ("stop", 7, None)])
def test_done_names_the_stop_string_only_when_one_ended_the_answer(reason, sent, read):
    fields = {"stop_sequence": sent} if sent is not None else {}
    end = protocol.encode_event(protocol.DONE, finish_reason=reason, usage={}, **fields)
    done = list(JobReader("j", prompt_tokens=3).replay(_entries(["a"], end)))[-1]
    assert isinstance(done, Done) and done.stop_sequence == read


def test_an_ordinary_model_keeps_think_tags_as_content():
    reader = JobReader("j", prompt_tokens=3)
    list(reader.replay(_entries(PIECES, protocol.encode_event(protocol.DONE, finish_reason="stop", usage={}))))
    assert (reader.reasoning_text, reader.text) == ("", "".join(PIECES))


def test_a_prompt_that_opened_the_thinking_starts_the_output_inside_it():
    reader = JobReader("j", prompt_tokens=3, reasoner=True, thinking_opened=True)
    pieces = ["Let me", " think.</th", "ink>\n\nIt is 4."]
    list(reader.replay(_entries(pieces, protocol.encode_event(protocol.DONE, finish_reason="stop", usage={}))))
    assert (reader.reasoning_text, reader.text) == ("Let me think.", "It is 4.")


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_the_opened_splitter_drops_a_repeated_think_tag_however_it_is_cut(size):
    text = "<think>\nhmm</think>\n\nyes"
    splitter = ThinkSplitter(opened=True)
    parts = [splitter.push(text[i:i + size]) for i in range(0, len(text), size)] + [splitter.flush()]
    assert ("".join(r for r, _ in parts), "".join(c for _, c in parts)) == ("hmm", "yes")


def test_an_error_ends_the_replay_and_keeps_what_arrived_and_nul_can_be_replaced():
    reader = JobReader("j", prompt_tokens=3, replace_nul=True)
    end = protocol.encode_event(protocol.ERROR, code="engine_error", message="boom", usage=protocol.usage_dict(0, 3, 2))
    after = protocol.encode_event(protocol.DELTA, text="never", usage={})
    events = list(reader.replay([*_entries(["a\x00", "b"], end), (b"1-0", after)]))
    assert isinstance(events[-1], Failed) and (events[-1].code, events[-1].message) == ("engine_error", "boom")
    assert reader.text == "a\ufffdb" and reader.usage["completion_tokens"] == 2


def test_a_reader_closed_before_the_end_cancels_the_job_and_one_that_saw_the_end_does_not(redis_client, settings):
    settings.LEVEE_JOB_QUEUE_TIMEOUT = 30
    left, finished = uuid.uuid4().hex, uuid.uuid4().hex

    async def main():
        client = jobs.redis_client()
        for job in (left, finished):
            await client.xadd(protocol.stream_key(job), protocol.encode_event(protocol.STARTED))
            await client.xadd(protocol.stream_key(job), protocol.encode_event(protocol.DELTA, text="hi", usage={}))
        await client.xadd(protocol.stream_key(finished), protocol.encode_event(protocol.DONE, finish_reason="stop",
                                                                               usage={}))
        reader = JobReader(left, prompt_tokens=1)
        async with aclosing(reader.follow()) as events:
            first = await anext(events)
        done_reader = JobReader(finished, prompt_tokens=1)
        seen = [e async for e in done_reader.follow()]
        return first, seen, await client.exists(protocol.cancel_key(left)), \
            await client.exists(protocol.cancel_key(finished))

    first, seen, cancelled_left, cancelled_finished = asyncio.run(main())
    assert isinstance(first, Text) and first.content == "hi"
    assert [type(e) for e in seen] == [Text, Done]
    assert (cancelled_left, cancelled_finished) == (1, 0)


def test_a_queued_job_yields_keepalives(redis_client, settings, monkeypatch):
    settings.LEVEE_JOB_QUEUE_TIMEOUT = 30
    real = jobs.events
    monkeypatch.setattr(jobs, "events", lambda job_id, **kw: real(job_id, **kw, keepalive_every=0.05))
    job = uuid.uuid4().hex

    async def main():
        async with aclosing(JobReader(job, prompt_tokens=1).follow()) as events:
            return await anext(events)

    assert isinstance(asyncio.run(main()), Keepalive)
