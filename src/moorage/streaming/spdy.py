"""SPDY/3 framing, sans I/O: what kubectl, the API server and the kubelet speak for exec, attach and
port-forward (``Upgrade: SPDY/3.1``, Go's moby/spdystream). What a streaming server needs, and a client that
opens streams (``moorage exec``).

Frames (draft-mbelshe-httpbis-spdy-00, §2.2): a control frame starts with bit 1, the version (3), the type, then
flags and a 24-bit length; a data frame starts with bit 0 and the 31-bit stream id. Header blocks (SYN_STREAM,
SYN_REPLY, HEADERS) are ``count, (len name, name, len value, value)*`` of 32-bit big-endian lengths, compressed
with zlib against a fixed dictionary, in one compression context per direction for the whole connection (each
block ends with a sync flush).

Flow control (SPDY/3.1's WINDOW_UPDATE) is parsed and ignored: spdystream neither sends nor honours it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9

# RST_STREAM status codes (§2.6.3)
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL, INTERNAL_ERROR = 1, 2, 3, 5, 6
STREAM_IN_USE, STREAM_ALREADY_CLOSED = 8, 9

MAX_FRAME_LENGTH = (1 << 24) - 1
MAX_HEADER_BLOCK = 1 << 16  # decompressed; Kubernetes' streams carry a few short headers: bigger is an attack
MAX_HEADER_VALUES = 64  # names and NUL-separated values in one block, likewise
MAX_CONTROL_FRAME = MAX_HEADER_BLOCK  # compressed headers are no bigger than what they decompress to, roughly


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3: the session must end."""


def _dictionary() -> bytes:
    """The zlib dictionary of §2.6.10.1: length-prefixed header names and common values, then a run of status
    codes, reason phrases, dates and content types."""
    words = (  # noqa: SIM905 (the spec's list, as it reads there)
        "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
        "age allow authorization cache-control connection content-base content-encoding content-language "
        "content-length content-location content-md5 content-range content-type date etag expect expires from "
        "host if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
        "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
    ).split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class ControlFrame:
    type: int
    flags: int
    stream_id: int = 0  # SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE
    headers: dict[str, list[str]] = field(default_factory=dict)  # SYN_STREAM, SYN_REPLY, HEADERS
    associated_id: int = 0  # SYN_STREAM
    status: int = 0  # RST_STREAM, GOAWAY
    ping_id: int = 0  # PING
    delta: int = 0  # WINDOW_UPDATE

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = DataFrame | ControlFrame


class Decoder:
    """Bytes in, frames out: ``feed`` what the socket gave, and take the frames it returns. A data frame comes out
    in pieces as its bytes arrive (``fin`` on the last), so a peer's 16 MiB frame is never held whole; a control
    frame longer than :data:`MAX_CONTROL_FRAME` is a protocol error."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._data: tuple[int, int, bool] | None = None  # the data frame being received: stream, bytes left, FIN

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        out: list[Frame] = []
        while True:
            if self._data is not None:
                stream_id, left, fin = self._data
                piece = bytes(self._buffer[:left])
                if not piece and left:
                    break
                del self._buffer[: len(piece)]
                left -= len(piece)
                self._data = (stream_id, left, fin) if left else None
                out.append(DataFrame(stream_id, piece, fin and not left))
                continue
            if len(self._buffer) < 8:
                break
            first, length = int.from_bytes(self._buffer[:4], "big"), int.from_bytes(self._buffer[5:8], "big")
            if not first & 0x80000000:  # a data frame: its payload is passed on as it comes
                self._data = (first & 0x7FFFFFFF, length, bool(self._buffer[4] & FLAG_FIN))
                del self._buffer[:8]
                continue
            if length > MAX_CONTROL_FRAME:
                raise ProtocolError(f"control frame of {length} bytes (at most {MAX_CONTROL_FRAME})")
            if len(self._buffer) < 8 + length:
                break
            head, body = bytes(self._buffer[:8]), bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            frame = self._frame(head, body)
            if frame is not None:
                out.append(frame)
        return out

    def _frame(self, head: bytes, body: bytes) -> Frame | None:
        first, flags = struct.unpack(">I", head[:4])[0], head[4]
        if not first & 0x80000000:
            return DataFrame(first & 0x7FFFFFFF, body, bool(flags & FLAG_FIN))
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}, want {VERSION}")
        try:
            return self._control(kind, flags, body)
        except (struct.error, IndexError) as exc:
            raise ProtocolError(f"malformed control frame of type {kind}: {exc}") from exc

    def _control(self, kind: int, flags: int, body: bytes) -> ControlFrame | None:
        if kind == SYN_STREAM:
            stream_id, associated = struct.unpack(">II", body[:8])
            return ControlFrame(
                kind, flags, stream_id & 0x7FFFFFFF, self._headers(body[10:]), associated_id=associated & 0x7FFFFFFF
            )
        if kind in (SYN_REPLY, HEADERS):
            return ControlFrame(kind, flags, struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF, self._headers(body[4:]))
        if kind == RST_STREAM:
            stream_id, status = struct.unpack(">II", body[:8])
            return ControlFrame(kind, flags, stream_id & 0x7FFFFFFF, status=status)
        if kind == PING:
            return ControlFrame(kind, flags, ping_id=struct.unpack(">I", body[:4])[0])
        if kind == GOAWAY:
            last, status = struct.unpack(">II", body[:8])
            return ControlFrame(kind, flags, last & 0x7FFFFFFF, status=status)
        if kind == WINDOW_UPDATE:
            stream_id, delta = struct.unpack(">II", body[:8])
            return ControlFrame(kind, flags, stream_id & 0x7FFFFFFF, delta=delta & 0x7FFFFFFF)
        if kind == SETTINGS:
            return ControlFrame(kind, flags)
        return None  # unknown control frames are ignored (§2.2.1)

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from exc
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        headers: dict[str, list[str]] = {}
        try:
            (count,), offset = struct.unpack(">I", raw[:4]), 4
            for _ in range(count):
                (size,) = struct.unpack(">I", raw[offset : offset + 4])
                name, offset = raw[offset + 4 : offset + 4 + size].decode().lower(), offset + 4 + size
                (size,) = struct.unpack(">I", raw[offset : offset + 4])
                value, offset = raw[offset + 4 : offset + 4 + size].decode(), offset + 4 + size
                values = headers.setdefault(name, [])
                values.extend(value.split("\0", MAX_HEADER_VALUES))
                if len(headers) + sum(map(len, headers.values())) > MAX_HEADER_VALUES:
                    raise ProtocolError(f"more than {MAX_HEADER_VALUES} header names and values in one block")
        except (struct.error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"malformed header block: {exc}") from exc
        return headers


class Encoder:
    """Frames out as bytes, with the connection's one header compression context."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    def data(self, stream_id: int, data: bytes, fin: bool = False) -> bytes:
        out = bytearray()
        for start in range(0, max(len(data), 1), MAX_FRAME_LENGTH):
            chunk = data[start : start + MAX_FRAME_LENGTH]
            last = start + MAX_FRAME_LENGTH >= len(data)
            flags = FLAG_FIN if fin and last else 0
            out += struct.pack(">IB", stream_id & 0x7FFFFFFF, flags) + len(chunk).to_bytes(3, "big") + chunk
        return bytes(out)

    def syn_stream(self, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
        """A client's new stream: id, no associated stream, priority 0, then the header block."""
        body = struct.pack(">IIBB", stream_id, 0, 0, 0) + self._header_block(headers)
        return _control(SYN_STREAM, FLAG_FIN if fin else 0, body)

    def syn_reply(self, stream_id: int, headers: dict[str, str] | None = None, fin: bool = False) -> bytes:
        body = struct.pack(">I", stream_id) + self._header_block(headers or {})
        return _control(SYN_REPLY, FLAG_FIN if fin else 0, body)

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return _control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return _control(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_stream_id: int, status: int = 0) -> bytes:
        return _control(GOAWAY, 0, struct.pack(">II", last_stream_id, status))

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = bytearray(struct.pack(">I", len(headers)))
        for name, value in headers.items():
            for part in (name.lower().encode(), value.encode()):
                raw += struct.pack(">I", len(part)) + part
        return self._deflate.compress(bytes(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


def _control(kind: int, flags: int, body: bytes) -> bytes:
    return struct.pack(">HHB", 0x8000 | VERSION, kind, flags) + len(body).to_bytes(3, "big") + body
