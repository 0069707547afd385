"""A WebSocket (RFC 6455) on a connection the server has upgraded, framed by wsproto (sans-I/O: bytes in,
events out). The server parses the handshake request itself (h11) and answers it with :func:`accept_headers`;
from then on :meth:`WebSocket.run` reads frames, answers pings, completes the close handshake, and hands each
piece of message data to a handler as it arrives (a message is never gathered whole, so its size costs no
memory: the handler's own bounds apply, and while it waits, nothing more is read from the peer).

Lifecycle::

    headers = accept_headers(request_headers, protocol)   # raises HandshakeError (status, message)
    ws = WebSocket(reader, writer, leftover, idle_timeout)
    runner = asyncio.create_task(ws.run(handler))          # handler(data, first_of_message) for each piece
    await ws.send(b"\\x01hello")                           # one binary message (text=True: a text one)
    await ws.close()                                       # close frame (1000), then the socket
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from moorage.streaming.channel import ByteWriter, IdleReader, close_within

log = structlog.get_logger(__name__)

Handler = Callable[[bytes, bool], Awaitable[None]]
CLOSE_TIMEOUT = 5.0  # for the peer's close frame once we sent ours


class HandshakeError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def accept_headers(headers: dict[str, list[str]], protocol: str | None) -> list[tuple[str, str]]:
    """The 101 answer's headers to a WebSocket upgrade request, choosing ``protocol`` ("" or None: none)."""
    if headers.get("sec-websocket-version", [""])[0].strip() != "13":
        raise HandshakeError(426, "WebSocket version 13 is required", [("Sec-WebSocket-Version", "13")])
    key = headers.get("sec-websocket-key", [""])[0].strip()
    if not key:
        raise HandshakeError(400, "a WebSocket upgrade needs a Sec-WebSocket-Key")
    answer = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode()),
    ]
    if protocol:
        answer.append(("Sec-WebSocket-Protocol", protocol))
    return answer


def offered_protocols(headers: dict[str, list[str]]) -> list[str]:
    return [p.strip() for value in headers.get("sec-websocket-protocol", []) for p in value.split(",") if p.strip()]


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: ByteWriter, leftover: bytes, idle_timeout: float) -> None:
        self._reader = IdleReader(reader, idle_timeout)
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._leftover = leftover
        self._lock = asyncio.Lock()
        self._peer_closed = asyncio.Event()
        self._starting = True  # the next message data begins a message
        self.closed = False

    async def send(self, data: bytes, *, text: bool = False) -> None:
        """One whole message; nothing once the connection is closing."""
        event: BytesMessage | TextMessage = TextMessage(data.decode()) if text else BytesMessage(data)
        await self._send(event)

    async def run(self, handler: Handler) -> None:
        """Read frames until the peer closes, hangs up, breaks the protocol or lets the connection go idle."""
        try:
            if self._leftover:
                self._ws.receive_data(self._leftover)
                await self._handle(handler)
            while not self._peer_closed.is_set() and (data := await self._reader.read()):
                self._ws.receive_data(data)
                await self._handle(handler)
        except (ConnectionError, OSError):
            pass
        finally:
            self._peer_closed.set()
            self.closed = True

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._writer.transport

    @property
    def idle_timeout(self) -> float:
        return self._reader.timeout

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Our close frame, the peer's answer (for a short while), then the socket; reset if the peer does not
        take what is buffered for it within :data:`channel.CLOSE_TIMEOUT`."""
        await close_within(self._writer, self._close(code, reason))
        self.closed = True
        self._peer_closed.set()

    async def _close(self, code: int, reason: str) -> None:
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._send(CloseConnection(code=code, reason=reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._peer_closed.wait(), CLOSE_TIMEOUT)
        self.closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _handle(self, handler: Handler) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                await handler(bytes(event.data), self._first(event))
            elif isinstance(event, TextMessage):
                await handler(event.data.encode(), self._first(event))
            elif isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, CloseConnection):
                if event.code not in (CloseReason.NORMAL_CLOSURE, CloseReason.NO_STATUS_RCVD):
                    log.info("WebSocket client closed", code=event.code, reason=(event.reason or "")[:160])
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send(event.response())
                elif self._ws.state is ConnectionState.OPEN:  # a frame wsproto could not parse: it says why
                    await self._send(CloseConnection(code=event.code, reason=(event.reason or "")[:100]))
                self._peer_closed.set()
                return

    def _first(self, event: BytesMessage | TextMessage) -> bool:
        """Whether ``event`` begins a message (pieces of one message follow until message_finished)."""
        first, self._starting = self._starting, event.message_finished
        return first

    async def _send(self, event: Event) -> None:
        async with self._lock:
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                return  # closing or closed: nothing more goes out
            self._reader.active()
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError):
                self._peer_closed.set()
