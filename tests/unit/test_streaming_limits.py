"""The streaming server's bounds, as pure logic: who may hold a connection without a token, and the resize
stream's decoder."""

from __future__ import annotations

import asyncio

import pytest

from moorage.streaming import channel, remotecommand
from moorage.streaming.admission import Admission
from moorage.streaming.channel import INBOX_BYTES, Inbox


def test_connections_without_a_token_are_bounded_per_peer_and_in_all() -> None:
    admission = Admission(max_connections=10, max_strangers=5, max_strangers_per_peer=3)
    assert [admission.admit("a") for _ in range(4)] == [True, True, True, False]
    assert [admission.admit("b") for _ in range(3)] == [True, True, False]  # 5 in all
    admission.authenticated("a")  # a token: no longer a stranger, still a connection
    assert admission.admit("a")
    assert (admission.connections, admission.strangers) == (6, 5)
    admission.release("a", stranger=False)
    admission.release("a", stranger=True)
    assert admission.admit("b")
    assert (admission.connections, admission.strangers) == (5, 5)


def test_every_connection_counts_against_the_descriptor_budget() -> None:
    admission = Admission(max_connections=3, max_strangers=3, max_strangers_per_peer=3)
    for _ in range(3):
        assert admission.admit("k")
        admission.authenticated("k")
    assert not admission.admit("other")


def test_the_budget_leaves_most_descriptors_to_the_rest_of_the_daemon() -> None:
    small = Admission.for_open_files(1024)
    assert small.max_connections * 4 <= 512
    assert small.max_strangers_per_peer <= small.max_strangers < small.max_connections
    big = Admission.for_open_files(1 << 20)
    assert (big.max_connections, big.max_strangers, big.max_strangers_per_peer) == (4096, 256, 64)


def test_refusals_are_logged_once_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    admission = Admission(max_connections=1, max_strangers=1, max_strangers_per_peer=1, log_interval=3600)
    assert admission.admit("x")
    for _ in range(1000):
        assert not admission.admit("x")
    assert capsys.readouterr().out.count("refusing streaming connections") == 1


def test_resize_sizes_come_out_of_any_split() -> None:
    data = b' {"Width":80,"Height":24}\n{"Width":120,\n "Height":40}\n'
    for cut in range(len(data)):
        decoder = remotecommand.ResizeDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == [(80, 24), (120, 40)]


def test_a_resize_that_never_ends_is_refused_once_past_the_bound() -> None:
    decoder = remotecommand.ResizeDecoder()
    assert decoder.feed(b'{"Width": "') == []
    for _ in range(15):  # 971 bytes in all: an unfinished size, within the bound
        assert decoder.feed(b"x" * 64) == []
    with pytest.raises(ValueError, match="longer than 1024 bytes"):
        decoder.feed(b"x" * 64)


@pytest.mark.parametrize("junk", [b"[1,2]}", b'{"Width":"wide","Height":1}', b'{"Width":-1}', b"nonsense}"])
def test_what_is_not_a_terminal_size_is_refused(junk: bytes) -> None:
    with pytest.raises(ValueError, match="not a terminal size"):
        remotecommand.ResizeDecoder().feed(junk)


def test_a_stream_nobody_reads_ends_the_connection_after_its_stall_timeout() -> None:
    """The connection is not read while a stream's inbox is full, so neither idleness nor a hang-up shows: a
    wait longer than the stall timeout ends it, and the connection going meanwhile ends the wait."""

    async def scenario() -> None:
        inbox = Inbox(stall_timeout=0.2)
        await inbox._received(b"x" * INBOX_BYTES)
        with pytest.raises(ConnectionError, match=r"not read for 0\.2 s"):
            await inbox._received(b"more")
        other = Inbox(stall_timeout=30)
        await other._received(b"x" * INBOX_BYTES)
        waiting = asyncio.create_task(other._received(b"more"))
        await asyncio.sleep(0.05)
        other._ended()  # the connection went away
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_a_peer_that_stops_reading_is_reset_once_the_close_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real loopback socket whose peer never reads: the closing drain cannot finish, so the connection is
    reset after CLOSE_TIMEOUT and its descriptor freed."""
    monkeypatch.setattr(channel, "CLOSE_TIMEOUT", 0.3)

    async def scenario() -> None:
        accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await asyncio.open_connection("127.0.0.1", port)  # never reads
        writer = await accepted
        writer.write(b"x" * (64 << 20))  # far more than the socket buffers hold

        async def closing() -> None:
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        began = asyncio.get_running_loop().time()
        await channel.close_within(writer, closing())
        assert asyncio.get_running_loop().time() - began < 5
        assert writer.transport.is_closing()  # reset: the drain never finished, so close() was never reached
        client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
