"""A SPDY/3 session on an upgraded connection. The client opens the streams (one per channel: stdin, stdout,
stderr, error, resize; or a data and an error stream per forwarded port) with :meth:`Session.open`; the server
takes them from :meth:`Session.next_stream`, already answered with SYN_REPLY; then both read and write them.

Lifecycle::

    session = Session(reader, writer)
    runner = asyncio.create_task(session.run())     # reads frames until the peer goes away
    stdout = await session.next_stream()            # server: None once the connection is gone
    stdout = await session.open({"streamType": "stdout"})  # client: once the server answered
    await stdout.write(b"hello")
    await stdout.close()                            # our half: DATA with FIN
    await session.close()                           # GOAWAY, then the socket
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from moorage.streaming import spdy
from moorage.streaming.channel import ByteReader, ByteWriter, IdleReader, Inbox, close_within

log = structlog.get_logger(__name__)

MAX_STREAMS = 256  # open at once; 5 streams for an exec, 2 per port-forward connection (kubectl opens them at once)
REPLY_TIMEOUT = 30.0


class Stream(Inbox):
    """One SPDY stream. ``read`` returns b"" once the peer closed its half (see :class:`Inbox` for its bounds)."""

    def __init__(self, session: Session, stream_id: int, headers: dict[str, list[str]]) -> None:
        super().__init__()
        self.id = stream_id
        self.headers = headers
        self._session = session
        self.local_closed = False

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def write(self, data: bytes) -> None:
        if not self.local_closed and data:
            await self._session.send(self._session.encoder.data(self.id, data))

    async def close(self) -> None:
        """Half-close: no more data from us. A stream closed both ways leaves the session's table."""
        if not self.local_closed:
            self.local_closed = True
            await self._session.send(self._session.encoder.data(self.id, b"", fin=True))
            self._session._closed_half(self)

    def _on_remote_close(self) -> None:
        self._session._closed_half(self)


class Session:
    def __init__(self, reader: ByteReader, writer: ByteWriter, leftover: bytes = b"", idle_timeout: float = 0) -> None:
        self._reader = IdleReader(reader, idle_timeout)
        self._writer = writer
        self._leftover = leftover
        self.encoder = spdy.Encoder()
        self._decoder = spdy.Decoder()
        self._lock = asyncio.Lock()
        self._streams: dict[int, Stream] = {}
        self._new: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_id = 0
        self._next_own_id = 1  # a client's streams have odd ids
        self._replies: dict[int, asyncio.Future[None]] = {}
        self._accepting = True
        self.closed = False

    def stop_accepting(self) -> None:
        """The server has every stream it will use (an exec's or attach's): a stream the client opens from now on
        is refused (RST_STREAM), and one opened but not taken yet is dropped, so none holds room in the session."""
        self._accepting = False
        while not self._new.empty():
            stream = self._new.get_nowait()
            if stream is not None:
                stream.discard()
                self._streams.pop(stream.id, None)
            else:
                self._new.put_nowait(None)  # the connection's end stays for whoever asks next
                break

    async def next_stream(self) -> Stream | None:
        """The next stream the client opens (already answered), or None once the connection is gone."""
        if self.closed and self._new.empty():
            return None
        return await self._new.get()

    async def open(self, headers: dict[str, str]) -> Stream:
        """A new stream with ``headers``, once the server has answered it. Raises ConnectionError."""
        stream_id, self._next_own_id = self._next_own_id, self._next_own_id + 2
        stream = Stream(self, stream_id, {k.lower(): [v] for k, v in headers.items()})
        self._streams[stream_id] = stream
        reply = self._replies[stream_id] = asyncio.get_running_loop().create_future()
        await self.send(self.encoder.syn_stream(stream_id, headers))
        try:
            await asyncio.wait_for(reply, REPLY_TIMEOUT)
        except TimeoutError:
            raise ConnectionError(f"no reply to stream {headers} in {REPLY_TIMEOUT:g} s") from None
        finally:
            self._replies.pop(stream_id, None)
        return stream

    async def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self._reader.active()
        async with self._lock:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError):
                self._gone()

    async def run(self) -> None:
        """Read frames until the peer hangs up, sends GOAWAY, breaks the protocol or lets the session go idle."""
        try:
            if self._leftover:
                await self._handle(self._decoder.feed(self._leftover))
            while not self.closed and (data := await self._reader.read()):
                await self._handle(self._decoder.feed(data))
        except spdy.ProtocolError as exc:
            log.warning("streaming client broke the SPDY protocol; closing", error=str(exc))
            await self.send(self.encoder.goaway(self._last_id, 1))
        except (ConnectionError, OSError):
            pass
        finally:
            self._gone()

    async def close(self) -> None:
        """GOAWAY, then the socket; reset if the peer does not take what is buffered for it in time."""
        await close_within(self._writer, self._close())
        self._gone()

    async def _close(self) -> None:
        if not self.closed:
            await self.send(self.encoder.goaway(self._last_id))
        self._gone()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _handle(self, frames: list[spdy.Frame]) -> None:
        for frame in frames:
            if isinstance(frame, spdy.DataFrame):
                stream = self._streams.get(frame.stream_id)
                if stream is not None:
                    await stream._received(frame.data, frame.fin)
            elif frame.type == spdy.SYN_STREAM:
                await self._open(frame)
            elif frame.type == spdy.SYN_REPLY:
                reply = self._replies.get(frame.stream_id)
                if reply is not None and not reply.done():
                    reply.set_result(None)
            elif frame.type == spdy.RST_STREAM:
                stream = self._streams.pop(frame.stream_id, None)
                if stream is not None:
                    stream.local_closed = True
                    stream._ended()
            elif frame.type == spdy.HEADERS and frame.fin and frame.stream_id in self._streams:
                self._streams[frame.stream_id]._ended()
            elif frame.type == spdy.PING and frame.ping_id % 2 == 1:  # the client's ping: echo it
                await self.send(self.encoder.ping(frame.ping_id))
            elif frame.type == spdy.GOAWAY:
                self._gone()

    async def _open(self, frame: spdy.ControlFrame) -> None:
        if frame.stream_id <= self._last_id or frame.stream_id % 2 == 0:  # ids only grow (SPDY/3 §2.3.2)
            await self.send(self.encoder.rst_stream(frame.stream_id, spdy.PROTOCOL_ERROR))
            return
        if len(self._streams) >= MAX_STREAMS or not self._accepting:
            self._last_id = max(self._last_id, frame.stream_id)
            await self.send(self.encoder.rst_stream(frame.stream_id, spdy.REFUSED_STREAM))
            return
        stream = Stream(self, frame.stream_id, frame.headers)
        stream.stall_timeout = self._reader.timeout or None
        self._streams[frame.stream_id] = stream
        self._last_id = max(self._last_id, frame.stream_id)
        await self.send(self.encoder.syn_reply(frame.stream_id))
        if frame.fin:
            stream._ended()
        self._new.put_nowait(stream)

    def _closed_half(self, stream: Stream) -> None:
        """Both halves closed (FIN each way, no reset needed): the stream no longer counts, as in spdystream."""
        if stream.local_closed and stream.remote_closed and self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self._streams.values()):
            stream._ended()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("the connection closed before the stream was answered"))
        self._new.put_nowait(None)
