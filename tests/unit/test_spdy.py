"""The SPDY/3 codec, the streaming tokens and the remote command protocol's pieces, mostly without sockets (the
integration tests drive them with moby/spdystream)."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib

import pytest

from moorage.cri import pb
from moorage.streaming import remotecommand, spdy
from moorage.streaming import tokens as streaming_tokens
from moorage.streaming.session import Session


def syn_stream(stream_id: int, headers: dict[str, str], deflate: zlib._Compress) -> bytes:
    """A client's SYN_STREAM, made the way the spec lays it out (not with our Encoder)."""
    block = struct.pack(">I", len(headers))
    for name, value in headers.items():
        block += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack(">IIBB", stream_id, 0, 0, 0) + compressed
    return struct.pack(">HHB", 0x8003, spdy.SYN_STREAM, 0) + len(body).to_bytes(3, "big") + body


def test_control_frames_arrive_whole_and_data_as_it_comes_however_the_bytes_are_cut() -> None:
    """A data frame's payload is passed on in the pieces the socket gave (FIN on the last), never held whole."""
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    wire = syn_stream(1, {"streamtype": "stdout"}, deflate) + syn_stream(3, {"streamType": "error"}, deflate)
    wire += spdy.Encoder().data(3, b"payload", fin=True) + spdy.Encoder().data(1, b"", fin=True)
    decoder, frames = spdy.Decoder(), []
    for i in range(len(wire)):
        frames += decoder.feed(wire[i : i + 1])
    controls = [f for f in frames if isinstance(f, spdy.ControlFrame)]
    assert [f.headers for f in controls] == [{"streamtype": ["stdout"]}, {"streamtype": ["error"]}]  # names lowered
    data = [f for f in frames if isinstance(f, spdy.DataFrame)]
    assert [(f.stream_id, f.data, f.fin) for f in data if f.stream_id == 3] == [
        *[(3, bytes([c]), False) for c in b"payloa"],
        (3, b"d", True),
    ]
    assert [(f.data, f.fin) for f in data if f.stream_id == 1] == [(b"", True)]


def test_a_huge_data_frame_is_never_buffered_whole() -> None:
    head = struct.pack(">IB", 5, 0) + (16 * 1024 * 1024 - 1).to_bytes(3, "big")
    decoder = spdy.Decoder()
    frames = decoder.feed(head + b"x" * 65536)
    assert [len(f.data) for f in frames if isinstance(f, spdy.DataFrame)] == [65536]
    assert len(decoder._buffer) == 0


def test_oversized_control_frames_and_header_blocks_are_protocol_errors() -> None:
    too_long = struct.pack(">I", 0x80000000 | spdy.VERSION << 16 | spdy.SYN_STREAM) + b"\0"
    too_long += (spdy.MAX_CONTROL_FRAME + 1).to_bytes(3, "big")
    with pytest.raises(spdy.ProtocolError, match="control frame"):
        spdy.Decoder().feed(too_long)
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    with pytest.raises(spdy.ProtocolError, match="header names and values"):
        spdy.Decoder().feed(syn_stream(1, {"x": "\0" * 10000}, deflate))
    many = {f"h{i}": "v" for i in range(spdy.MAX_HEADER_VALUES)}
    with pytest.raises(spdy.ProtocolError, match="header names and values"):
        spdy.Decoder().feed(syn_stream(1, many, zlib.compressobj(zdict=spdy.DICTIONARY)))


def test_our_replies_decode_with_the_spec_dictionary() -> None:
    encoder = spdy.Encoder()
    wire = encoder.syn_reply(5, {"X-Test": "a"}) + encoder.syn_reply(7) + encoder.rst_stream(9, spdy.CANCEL)
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    first_block = wire[8 + 4 : 8 + int.from_bytes(wire[5:8], "big")]
    raw = inflate.decompress(first_block)
    assert raw == struct.pack(">I", 1) + struct.pack(">I", 6) + b"x-test" + struct.pack(">I", 1) + b"a"
    frames = spdy.Decoder().feed(wire)
    assert [(f.type, f.stream_id) for f in frames if isinstance(f, spdy.ControlFrame)] == [
        (spdy.SYN_REPLY, 5),
        (spdy.SYN_REPLY, 7),
        (spdy.RST_STREAM, 9),
    ]


def test_the_dictionary_is_the_specs() -> None:
    # zlib names a preset dictionary by its Adler-32 in the stream header: a peer with another one cannot inflate
    assert (len(spdy.DICTIONARY), zlib.adler32(spdy.DICTIONARY)) == (1423, 0xE3C6A7C2)


def test_an_empty_data_frame_carries_fin() -> None:
    assert spdy.Encoder().data(1, b"", fin=True) == b"\x00\x00\x00\x01\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        (struct.pack(">HHB", 0x8002, spdy.SYN_STREAM, 0) + (0).to_bytes(3, "big"), "SPDY version 2"),
        (
            struct.pack(">HHB", 0x8003, spdy.SYN_REPLY, 0) + (8).to_bytes(3, "big") + b"\0\0\0\1garb",
            "does not decompress",
        ),
        (struct.pack(">HHB", 0x8003, spdy.RST_STREAM, 0) + (2).to_bytes(3, "big") + b"\0\1", "malformed"),
    ],
)
def test_broken_frames_are_protocol_errors(wire: bytes, problem: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=problem):
        spdy.Decoder().feed(wire)


def test_unknown_control_frames_and_window_updates_pass() -> None:
    unknown = struct.pack(">HHB", 0x8003, 42, 0) + (4).to_bytes(3, "big") + b"abcd"
    window = struct.pack(">HHB", 0x8003, spdy.WINDOW_UPDATE, 0) + (8).to_bytes(3, "big") + struct.pack(">II", 1, 99)
    frames = spdy.Decoder().feed(unknown + window)
    assert frames == [spdy.ControlFrame(spdy.WINDOW_UPDATE, 0, 1, delta=99)]


def test_a_header_block_too_big_is_refused() -> None:
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    with pytest.raises(spdy.ProtocolError, match="larger than"):
        spdy.Decoder().feed(syn_stream(1, {"x": "y" * (spdy.MAX_HEADER_BLOCK + 10)}, deflate))


def test_tokens_serve_once_for_their_kind_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = streaming_tokens.Tokens()
    request = pb.ExecRequest(container_id="c", cmd=["sh"], stdout=True)
    token = tokens.add("exec", request)
    assert tokens.take("portforward", token) is None
    assert tokens.take("exec", token) == request
    assert tokens.take("exec", token) is None
    old = tokens.add("exec", request)
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + streaming_tokens.TOKEN_TTL + 1)
    assert tokens.take("exec", old) is None


def test_the_protocol_is_the_clients_first_that_we_speak() -> None:
    assert remotecommand.negotiate(["v5.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io"]) == (
        "v3.channel.k8s.io"
    )
    assert remotecommand.negotiate([]) == ""  # no header at all: the legacy protocol
    assert remotecommand.negotiate(["v9.channel.k8s.io"]) is None


def test_outcomes_as_kubectl_reads_them() -> None:
    failure = json.loads(remotecommand.outcome(remotecommand.V4, 7, "", ["false"]))
    assert (failure["status"], failure["reason"]) == ("Failure", "NonZeroExitCode")
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert json.loads(remotecommand.outcome(remotecommand.V4, 0, "", ["true"])) == {
        "metadata": {},
        "status": "Success",
    }
    assert remotecommand.outcome(remotecommand.V3, 0, "", ["true"]) == b""
    assert remotecommand.outcome(remotecommand.V2, None, "no such container", ["x"]) == b"no such container"


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def read(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def test_resizes_are_read_across_frame_boundaries() -> None:
    async def collect() -> list[tuple[int, int]]:
        stream = Chunks(b'{"Width":80,"He', b'ight":24}\n{"Width":120,"Height":40}', b"\n")
        return [size async for size in remotecommand.resizes(stream)]

    assert asyncio.run(collect()) == [(80, 24), (120, 40)]


def test_once_the_server_has_its_streams_a_new_one_is_refused() -> None:
    """An exec's session after its channels are taken: a stream the client opens is reset (REFUSED_STREAM),
    not answered and kept, so none holds room or memory in the session. Over a real loopback socket."""

    async def scenario() -> list[tuple[int, int, int]]:
        sessions: asyncio.Queue[Session] = asyncio.Queue()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(reader, writer)
            await sessions.put(session)
            await session.run()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        deflate, decoder = zlib.compressobj(zdict=spdy.DICTIONARY), spdy.Decoder()
        seen: list[tuple[int, int, int]] = []
        session = await sessions.get()
        writer.write(syn_stream(1, {"streamType": "error"}, deflate))
        assert (await asyncio.wait_for(session.next_stream(), 5)) is not None
        session.stop_accepting()
        writer.write(syn_stream(3, {"streamType": "stdin"}, deflate))
        while len(seen) < 2:
            for frame in decoder.feed(await asyncio.wait_for(reader.read(4096), 5)):
                if isinstance(frame, spdy.ControlFrame):
                    seen.append((frame.type, frame.stream_id, frame.status))
        writer.close()
        await session.close()
        server.close()
        await server.wait_closed()
        return seen

    assert asyncio.run(scenario()) == [(spdy.SYN_REPLY, 1, 0), (spdy.RST_STREAM, 3, spdy.REFUSED_STREAM)]
