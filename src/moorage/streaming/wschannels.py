"""Kubernetes' channel protocols over a WebSocket, as the kubelet's streaming server speaks them: every message
starts with its channel's number (exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
port-forward: 2i data and 2i+1 error for the request's i-th port). The ``base64`` variants send text messages:
the number as an ASCII digit, then the data in base64. ``v5.channel.k8s.io`` adds the close signal: a message
``255, n`` from the client closes channel n (how it ends stdin). And port-forward's ``SPDY/3.1+portforward.k8s.io``
carries a whole SPDY session in binary messages (client-go's tunneling dialer): :class:`Tunnel`.

Lifecycle::

    mux = Channels(ws, spec, readable={0, 4})   # spec from PROTOCOLS; the other channels are the server's
    runner = asyncio.create_task(ws.run(mux.received))
    data = await mux.channels[0].read()         # b"" once closed (v5) or the connection is gone
    await mux.channels[1].write(b"out")
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

from moorage.streaming.channel import Inbox
from moorage.streaming.websocket import WebSocket

CLOSE_SIGNAL = 255
TUNNEL = "SPDY/3.1+portforward.k8s.io"


@dataclass(frozen=True)
class Spec:
    """What one subprotocol name means."""

    base64: bool = False
    close_signal: bool = False
    status: bool = False  # the outcome as a v4 JSON status (else a plain message)
    tunnel: bool = False


REMOTE_COMMAND = {
    "v5.channel.k8s.io": Spec(close_signal=True, status=True),
    "v4.channel.k8s.io": Spec(status=True),
    "v4.base64.channel.k8s.io": Spec(base64=True, status=True),
    "channel.k8s.io": Spec(),
    "base64.channel.k8s.io": Spec(base64=True),
    "": Spec(),  # a client that names no subprotocol: channel.k8s.io
}
PORT_FORWARD = {
    TUNNEL: Spec(tunnel=True),
    "v4.channel.k8s.io": Spec(),
    "v4.base64.channel.k8s.io": Spec(base64=True),
    "": Spec(),
}


def negotiate(offered: list[str], supported: dict[str, Spec]) -> str | None:
    """The first subprotocol the client offers that we speak ("" when it offers none), as the kubelet picks."""
    return next((p for p in offered or [""] if p in supported), None)


class Channel(Inbox):
    """One numbered channel. Writes go out as one message each; :meth:`close` only ends our half (the
    connection's close ends the client's reads, as with the kubelet)."""

    def __init__(self, mux: Channels, number: int) -> None:
        super().__init__(mux._ws.idle_timeout)
        self.number = number
        self._mux = mux
        self.local_closed = False

    async def write(self, data: bytes) -> None:
        if data and not self.local_closed:
            await self._mux.send(self.number, data)

    async def close(self) -> None:
        self.local_closed = True


class Channels:
    def __init__(self, ws: WebSocket, spec: Spec, count: int, readable: set[int]) -> None:
        self._ws = ws
        self._spec = spec
        self._readable = readable
        self.channels = [Channel(self, n) for n in range(count)]
        for n in set(range(count)) - readable:
            self.channels[n].discard()  # the server's to write: what the client sends there is dropped
        self._current: Channel | None = None  # the channel the message being received is for
        self._carry = b""  # base64 not yet decodable (a message split mid-quantum)
        self._closing = False  # the message being received is a close signal

    async def send(self, number: int, data: bytes) -> None:
        if self._spec.base64:
            await self._ws.send(str(number).encode() + base64.b64encode(data), text=True)
        else:
            await self._ws.send(bytes((number,)) + data)

    async def announce(self, number: int) -> None:
        """An empty message on a channel, as the kubelet sends first (old clients wait for it)."""
        await self._ws.send(str(number).encode() if self._spec.base64 else bytes((number,)), text=self._spec.base64)

    def end(self) -> None:
        """The connection is gone: every channel's reader sees the end."""
        for channel in self.channels:
            channel._ended()

    async def received(self, data: bytes, first: bool) -> None:
        """A piece of a message from the client (``first``: it starts one)."""
        if first:
            self._current, self._carry, self._closing = None, b"", False
            if not data:
                return
            head, data = data[0], data[1:]
            if self._spec.close_signal and head == CLOSE_SIGNAL:
                self._closing = True
            else:
                self._current = self._channel(head - ord("0") if self._spec.base64 else head)
        if self._closing:
            if data:  # the channel number to close: the signal's one byte
                self._closing = False
                channel = self._channel(data[0])
                if channel is not None:
                    channel._ended()
            return
        if self._current is None or not data:
            return
        if self._spec.base64:
            data = self._decode(data)
        await self._current._received(data)

    def _channel(self, number: int) -> Channel | None:
        return self.channels[number] if number in self._readable and number < len(self.channels) else None

    def _decode(self, data: bytes) -> bytes:
        text = self._carry + bytes(data).strip()
        whole = len(text) - len(text) % 4
        self._carry = text[whole:]
        try:
            return base64.b64decode(text[:whole], validate=True)
        except binascii.Error:
            self._current = None  # not base64: the rest of this message is dropped
            return b""


class Tunnel(Inbox):
    """A WebSocket as the byte stream a SPDY session reads and writes (what client-go's TunnelingConnection
    makes of it on the other side): binary messages carry the bytes, in order, whatever their boundaries."""

    def __init__(self, ws: WebSocket) -> None:
        super().__init__(ws.idle_timeout)
        self._ws = ws
        self._pending = bytearray()

    async def received(self, data: bytes, first: bool) -> None:
        await self._received(data)

    async def read(self, n: int = -1) -> bytes:
        return await super().read()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await self._ws.send(data)

    def close(self) -> None:
        """The session is done: :meth:`wait_closed` closes the WebSocket."""

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._ws.transport

    async def wait_closed(self) -> None:
        await self._ws.close()
