"""What SPDY streams and WebSocket channels share: an inbox for what the peer sends (read by whoever serves the
channel, bounded so that TCP holds back a fast peer), the interface the server's exec, attach and port-forward
code writes to, and the reads of a connection that go quiet after an idle timeout.

Lifecycle::

    class Stream(Inbox): ...                  # a transport's channel: adds write() and close()
    await stream._received(data, fin=False)   # the transport's reader: waits while the inbox is full
    data = await stream.read()                # the consumer: b"" once the peer closed its half
    stream.discard()                          # nobody will read it: drop what comes
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

INBOX_BYTES = 1 << 20
CLOSE_TIMEOUT = 10.0
"""How long closing a connection may wait for the peer to take what is still buffered for it, before a reset."""


class ByteReader(Protocol):
    """The connection's reading side: a socket's, or a WebSocket tunnel's."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The socket's transport (``abort`` drops the connection at once, whatever is buffered for the peer)."""
        ...


class Duplex(Protocol):
    """A stream or channel as the server's exec, attach and port-forward code uses it."""

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" at the end."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Our half: no more data from us."""
        ...

    def discard(self) -> None:
        """Drop whatever the peer sends from now on."""
        ...


class Inbox:
    """What the peer sent on one stream, until read. Past :data:`INBOX_BYTES` waiting, :meth:`_received` waits
    until it is read (the transport's reader stops reading the connection meanwhile), so TCP pushes back on a
    peer that sends faster than the command reads. Call :meth:`discard` on a stream nobody will read.

    While it waits, the connection is not read, so neither its idle timeout nor the peer's hanging up can be
    seen: a wait longer than ``stall_timeout`` (the connection's idle timeout) ends the connection
    (ConnectionError), as the command did not read for that long."""

    def __init__(self, stall_timeout: float | None = None) -> None:
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffered = 0
        self._drained = asyncio.Event()
        self._discarding = False
        self.remote_closed = False
        self.stall_timeout = stall_timeout or None

    async def read(self) -> bytes:
        if self.remote_closed and self._inbox.empty():
            return b""
        data = await self._inbox.get()
        self._buffered -= len(data)
        self._drained.set()
        return data

    def discard(self) -> None:
        self._discarding = True
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._buffered = 0
        self._drained.set()

    async def _received(self, data: bytes, fin: bool = False) -> None:
        if data and not self._discarding and not self.remote_closed:
            while self._buffered and self._buffered + len(data) > INBOX_BYTES and not self._discarding:
                self._drained.clear()
                try:
                    await asyncio.wait_for(self._drained.wait(), self.stall_timeout)
                except TimeoutError:
                    raise ConnectionError(f"a stream was not read for {self.stall_timeout:g} s") from None
                if self.remote_closed:
                    return  # the connection is gone meanwhile
            if not self._discarding:
                self._buffered += len(data)
                self._inbox.put_nowait(data)
        if fin:
            self._ended()

    def _ended(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._inbox.put_nowait(b"")
            self._drained.set()  # a reader of the connection waiting for room goes on (and drops what it had)
            self._on_remote_close()

    def _on_remote_close(self) -> None:
        """The peer closed its half: for subclasses."""


class IdleReader:
    """Reads of a connection that end (b"") once nothing went either way for ``idle_timeout`` seconds (0: never).
    The transport calls :meth:`active` when it sends."""

    def __init__(self, reader: ByteReader, idle_timeout: float) -> None:
        self._reader = reader
        self._idle_timeout = idle_timeout
        self._active = time.monotonic()

    @property
    def timeout(self) -> float:
        return self._idle_timeout

    def active(self) -> None:
        self._active = time.monotonic()

    async def read(self) -> bytes:
        while True:
            if not self._idle_timeout:
                data = await self._reader.read(1 << 16)
                break
            left = self._active + self._idle_timeout - time.monotonic()
            if left <= 0:
                log.info("streaming session idle; closing", idle_timeout=self._idle_timeout)
                return b""
            try:
                data = await asyncio.wait_for(self._reader.read(1 << 16), left)
                break
            except TimeoutError:
                continue  # what we sent meanwhile counts as activity: look again
        self.active()
        return data


async def close_within(writer: ByteWriter, closing: Awaitable[None]) -> None:
    """Await ``closing`` (a close handshake, the last writes, ``wait_closed``) for :data:`CLOSE_TIMEOUT` at most;
    then reset the connection: a peer that stopped reading would otherwise hold it, and its descriptor, for good."""
    try:
        await asyncio.wait_for(closing, CLOSE_TIMEOUT)
    except TimeoutError:
        log.info("streaming peer did not take its last bytes; resetting the connection", timeout=CLOSE_TIMEOUT)
        writer.transport.abort()


async def socket_to_stream(reader: asyncio.StreamReader, stream: Duplex) -> None:
    """What a TCP connection sends, onto ``stream``; our half of the stream is closed at its end."""
    while chunk := await reader.read(1 << 16):
        await stream.write(chunk)
    await stream.close()


async def stream_to_socket(stream: Duplex, writer: asyncio.StreamWriter) -> None:
    """What the peer sends on ``stream``, onto a TCP connection, half-closed (EOF) at the stream's end."""
    while chunk := await stream.read():
        writer.write(chunk)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
