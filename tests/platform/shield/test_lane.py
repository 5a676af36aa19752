"""The limiter's own connections (`levee.core.store.Lane`): scripts by digest with a fallback, the 0.25 s
timeout, idle connections the server closed, and the cap on connections."""
import secrets
import socket
import struct
import threading
import time

import pytest

from levee.core import store
from levee.shield.limiter import LuaScript

OPTIONS = {"socket_timeout": 0.25, "socket_connect_timeout": 1.0, "health_check_interval": 30}


def command(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def test_a_script_redis_has_not_seen_goes_whole_once_then_by_digest(redis_client):
    script = LuaScript(f"-- {secrets.token_hex(8)}\nreturn ARGV[1] .. KEYS[1]")
    assert redis_client.script_exists(script.sha) == [False]
    assert script.run(["k"], ["v"]) == b"vk"  # NOSCRIPT, then EVAL (which loads it)
    assert redis_client.script_exists(script.sha) == [True]
    assert script.run(["k2"], ["w"]) == b"wk2"


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and answers the connection handshake, then never
    replies to a script call."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn):
        with conn:
            conn.settimeout(0.1)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:  # the client dropped the connection (a timed-out round trip)
                    return
                if not data:
                    return
                if b"EVAL" not in data:  # CLIENT SETINFO and the like: +OK per command
                    conn.sendall(b"+OK\r\n" * max(1, data.count(b"\r\n*") + data.startswith(b"*")))

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed at teardown
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    listener.close()


def test_a_redis_that_does_not_answer_is_given_up_on_after_the_timeout(silent_server):
    lane = store.Lane(silent_server, OPTIONS, max_connections=4)
    for _ in range(2):  # a fresh connection, then the same one reused
        started = time.monotonic()
        with pytest.raises(store.RedisDown):
            lane.call(command("EVALSHA", "0" * 40, "0"))
        assert time.monotonic() - started < 0.6


def test_the_timeout_is_the_kernels_so_a_round_trip_polls_nothing(settings):
    lane = store.Lane(settings.SHIELD_REDIS_URL, OPTIONS, max_connections=4)
    assert lane.call(command("PING")) == b"PONG"
    sock = lane._idle[0]._sock
    assert sock.gettimeout() is None  # blocking: CPython calls recv/send without a poll first
    seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    assert 0.24 <= seconds + micros / 1e6 <= 0.26  # the kernel rounds to its clock tick


def test_an_idle_connection_the_server_closed_reconnects_instead_of_failing(redis_client, settings, monkeypatch):
    lane = store.Lane(settings.SHIELD_REDIS_URL, OPTIONS, max_connections=4)
    first = lane.call(command("CLIENT", "ID"))
    redis_client.client_kill_filter(_id=first)
    time.sleep(0.05)
    monkeypatch.setattr(store, "_IDLE_PROBE_SECONDS", 0.0)  # as if it had sat idle for over a second
    second = lane.call(command("CLIENT", "ID"))
    assert second != first
    assert lane.call(command("CLIENT", "ID")) == second  # and that one is reused


def test_callers_beyond_the_cap_wait_for_a_connection_then_give_up(settings):
    # A 2 s socket timeout so one caller can hold the only connection in a 0.4 s BLPOP.
    options = {**OPTIONS, "socket_timeout": 2.0}
    lane = store.Lane(settings.SHIELD_REDIS_URL, options, max_connections=1, wait=1.0)
    impatient = store.Lane(settings.SHIELD_REDIS_URL, options, max_connections=1, wait=0.1)
    results = {}

    def hold(which):
        results[which] = which.call(command("BLPOP", f"levee:test:{secrets.token_hex(4)}", "0.4"))

    for which in (lane, impatient):
        holder = threading.Thread(target=hold, args=(which,))
        holder.start()
        time.sleep(0.1)
        started = time.monotonic()
        if which is lane:
            assert which.call(command("PING")) == b"PONG"  # waited for the holder, then used its connection
            assert 0.15 < time.monotonic() - started < 1.0
        else:
            with pytest.raises(store.RedisDown):
                which.call(command("PING"))
            assert time.monotonic() - started < 0.3
        holder.join()
        assert results[which] is None  # BLPOP timed out empty-handed
        assert which._made == 1


def test_the_event_loops_lane_gives_up_on_a_silent_redis_after_its_timeout_too(silent_server):
    import asyncio

    async def main():
        lane = store.AsyncLane(silent_server, OPTIONS, max_connections=4)
        for _ in range(2):  # a fresh connection, then a reconnect (the timed-out one was dropped)
            started = time.monotonic()
            with pytest.raises(store.RedisDown):
                await lane.call(command("EVALSHA", "0" * 40, "0"))
            assert time.monotonic() - started < 0.6

    asyncio.run(main())


def test_the_event_loops_lane_answers_and_reuses_its_connection(settings):
    import asyncio

    async def main():
        lane = store.AsyncLane(settings.SHIELD_REDIS_URL, OPTIONS, max_connections=4)
        first = await lane.call(command("CLIENT", "ID"))
        assert await lane.call(command("CLIENT", "ID")) == first  # kept, not re-made
        assert await lane.call(command("PING")) == b"PONG"

    asyncio.run(main())
