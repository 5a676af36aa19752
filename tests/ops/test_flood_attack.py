"""The flood simulator's attack mode (ops/flood_attack.py): its bots really come from many loopback
addresses, and its command line refuses what it cannot do."""
import asyncio

import pytest

from ops import flood_attack


def test_a_bot_request_comes_from_its_own_loopback_address():
    async def run():
        seen = []

        async def answer(reader, writer):
            seen.append(writer.get_extra_info("peername")[0])
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nSet-Cookie: csrftoken=abc; Path=/\r\n\r\nno")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        raw = flood_attack.Raw("127.0.0.1", port, "real")
        status, headers, body = await raw.request("127.31.7.9", "GET", "/v1/models")
        xff = flood_attack.Raw("127.0.0.1", port, "xff")
        await xff.request("10.1.2.3", "GET", "/v1/models")
        server.close()
        return seen, status, headers, body

    seen, status, headers, body = asyncio.run(run())
    assert seen == ["127.31.7.9", "127.0.0.1"]
    assert status == 401 and body == b"no" and headers["set-cookie"].startswith("csrftoken=abc")


def test_an_unknown_bot_kind_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        flood_attack.main(["--mix", "signup=1,dance=2"])
    assert "unknown bot kinds" in capsys.readouterr().err


def test_it_refuses_a_target_off_loopback():
    with pytest.raises(SystemExit):
        flood_attack.Attack("http://192.0.2.1:8000", rate=1, seconds=1, quiet=1, mix={"badkey": 1}, legit=[],
                            legit_interval=1, source="real", addresses=10, max_in_flight=10, server_pids=[],
                            redis_pids=[], database_url=None, legit_api="models", model="m", max_tokens=1,
                            victim="a@b.example")


def test_the_bots_run_in_a_process_of_their_own_at_the_generators_niceness():
    """The users' latencies are timed in this process; the bots send from a forked one, at the
    generator's niceness, and report back what they sent."""
    import os
    import socketserver
    import threading

    class Answer(socketserver.StreamRequestHandler):
        def handle(self):
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        attack = flood_attack.Attack(f"http://127.0.0.1:{server.server_address[1]}", rate=30, seconds=1, quiet=0,
                                     mix={"badkey": 1}, legit=[], legit_interval=1, source="real", addresses=50,
                                     max_in_flight=100, server_pids=[], redis_pids=[], database_url=None,
                                     legit_api="models", model="m", max_tokens=1, victim="a@b.example")
        child, go, results = attack.start_bots()
        go.set()
        report = results.get(timeout=60)
        child.join(10)
    finally:
        server.shutdown()
    assert child.pid != os.getpid() and child.exitcode == 0
    assert report["nice"] == min(19, os.nice(0) + flood_attack._NICE)
    badkey = report["stats"]["badkey"]
    assert report["requests"] == badkey.attempts >= 20 and badkey.statuses == {"401": badkey.attempts}
    assert attack.bot_requests == 0, "nothing was sent from this process"
