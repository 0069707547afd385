"""Read one image layer blob as a stream of tar members: the reading half of ``unpack``.

A blob is plain, gzip or zstd; ``detect_compression`` tells which from its first bytes. ``open_layer`` reads it
once, front to back: a worker thread reads the file, decompresses it and hashes the tar bytes (the diff id), up to
QUEUE_CHUNKS chunks ahead of the caller; the calling thread walks the tar headers with a ``TarReader``::

    with open_layer(blob, digest.update) as reader:
        while (member := reader.next()) is not None:
            ...                                      # reader.take(n) or reader.copy_to(fd, n) for the content
    # on a clean exit the rest of the stream (end blocks, padding) has been read and hashed too

The reader understands POSIX ustar, PAX (``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``mtime``,
``SCHILY.xattr.*``) and GNU (long names and links, base-256 numbers) headers. It checks what a stream can get
wrong (checksums, truncation, oversized extended headers, negative numbers, sparse files) and raises InvalidImage;
it makes no judgement on names, types or targets: that is the applier's business. Content is never copied
through Python objects larger than a chunk: ``take`` hands out a view of the current chunk, ``copy_to`` writes
straight from the chunks to a file descriptor. zlib, zstd, sha256 and file reads release the GIL, so
decompression overlaps whatever the caller does with the members.
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

import zstandard

from moorage.errors import InvalidImage, MoorageError, ResourceExhausted

Compression = Literal["gzip", "zstd", "none"]

CHUNK = 1 << 20  # bytes read from the blob, and the most a decompressor hands over at once
QUEUE_CHUNKS = 16  # chunks the decompressing thread may run ahead of the reader
EXT_HEADER_MAX = 16 << 20  # largest PAX or GNU long-name record accepted (xattrs included)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZERO_BLOCK = bytes(512)
_XATTR_PREFIX = b"SCHILY.xattr."

# Tar type flags (bytes of the typeflag field).
REG, AREG, CONTIG = ord("0"), 0, ord("7")
LNK, SYM, CHR, BLK, DIR, FIFO = (ord(c) for c in "123456")
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = (ord(c) for c in "xgLK")
DATA_TYPES = (REG, AREG, CONTIG)  # the types whose content follows the header


@dataclass(slots=True)
class Member:
    """One tar member, its GNU and PAX extensions applied; its content is read through the reader."""

    name: bytes  # as stored (after GNU/PAX long names), for messages
    typeflag: int
    size: int  # content bytes that follow the header (0 for header-only types)
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None

    @property
    def shown(self) -> str:
        return show_name(self.name)


def detect_compression(head: bytes) -> Compression:
    """The compression of a blob, from its first bytes (four are enough)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
        return "zstd"  # a zstd frame, or a skippable frame (zstd:chunked layers may start with one)
    return "none"


@contextlib.contextmanager
def open_layer(blob: Path, hash_update: Callable[[bytes], object], max_size: int | None = None) -> Iterator[TarReader]:
    """A reader of the tar members in ``blob``, decompressed on a worker thread that passes every chunk of tar
    bytes to ``hash_update`` first. On a clean exit the stream is read to its end (the end-of-archive blocks and
    any padding after them are part of the diff id); on any exit the worker is stopped and the file closed.

    Raises InvalidImage for a truncated or corrupt stream, ResourceExhausted when it decompresses to more than
    ``max_size`` bytes (a layer bomb), MoorageError when the blob cannot be read.
    """
    with open(blob, "rb", buffering=0) as f:
        kind = detect_compression(f.read(4))
        f.seek(0)
        chunks = _in_thread(_decompressed(f, kind, hash_update, blob, max_size))
        try:
            yield TarReader(chunks)
            for _ in chunks:
                pass
        finally:
            chunks.close()


def show_name(name: bytes) -> str:
    """A member name or other header bytes, for messages."""
    return name.decode("utf-8", "backslashreplace")


def _corrupt(detail: str) -> InvalidImage:
    return InvalidImage(f"layer is truncated or corrupt: {detail}")


# --- the decompressing thread ---------------------------------------------------------------------------------


def _decompressed(
    f: BinaryIO, kind: Compression, hash_update: Callable[[bytes], object], blob: Path, max_size: int | None = None
) -> Iterator[bytes]:
    """The tar bytes of the blob, in chunks of at most CHUNK bytes, each passed to ``hash_update`` first; at most
    ``max_size`` of them in all."""
    source: Iterator[bytes]
    if kind == "gzip":
        source = _gunzip(f)
    elif kind == "zstd":
        source = _unzstd(f)
    else:
        source = iter(partial(f.read, CHUNK), b"")
    total = 0
    try:
        for chunk in source:
            total += len(chunk)
            if max_size is not None and total > max_size:
                raise ResourceExhausted(
                    f"layer {blob.name} unpacks to more than image.max_layer_size ({max_size} bytes): refused"
                )
            hash_update(chunk)
            yield chunk
    except zlib.error as exc:
        raise _corrupt(f"gzip: {exc}") from exc
    except zstandard.ZstdError as exc:
        raise _corrupt(f"zstd: {exc}") from exc
    except OSError as exc:
        raise MoorageError(f"reading layer blob {blob}: {exc}") from exc


def _gunzip(f: BinaryIO) -> Iterator[bytes]:
    """Inflate every gzip member of ``f`` in turn; never more than CHUNK bytes of output per step (a zip bomb
    only costs time). A stream that stops inside a member is truncated."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = b""
    while True:
        if not data:
            data = f.read(CHUNK)
            if not data:
                break
        if inflater.eof:  # the previous member ended and more bytes follow: they must be another member
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = inflater.decompress(data, CHUNK)
        if out:
            yield out
        data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    while not inflater.eof and (out := inflater.decompress(b"", CHUNK)):
        yield out  # output zlib still held when the input ran out
    if not inflater.eof:
        raise _corrupt("the gzip stream ends early")


def _unzstd(f: BinaryIO) -> Iterator[bytes]:
    """Decompress every zstd frame of ``f``, CHUNK bytes at most per step. zstandard's reader ends quietly on a
    cut stream, so the frame headers are walked alongside to tell a whole stream from a truncated one."""
    frames = _ZstdFrames(f)
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], frames), read_size=CHUNK, read_across_frames=True
    )
    yield from iter(partial(reader.read, CHUNK), b"")
    if not frames.complete:
        raise _corrupt("the zstd stream ends early")


class _ZstdFrames:
    """A file wrapper that follows zstd frame and block headers (RFC 8878, section 3.1) in the bytes read through
    it. It decodes nothing: it reads sizes only, to know whether the stream stops between two frames."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._state = "magic"
        self._want = 4  # length of the header field being collected
        self._field = bytearray()
        self._skip = 0  # block content or skippable frame bytes to pass over
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "magic" and not self._field and not self._skip

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._feed(data)
        return data

    def _feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            take = min(self._want - len(self._field), n - i)
            self._field += data[i : i + take]
            i += take
            if len(self._field) == self._want:
                field = bytes(self._field)
                self._field.clear()
                self._advance(field)

    def _advance(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            if field == _ZSTD_MAGIC:
                self._state, self._want = "descriptor", 1
            elif field[0] & 0xF0 == 0x50 and field[1:] == b"\x2a\x4d\x18":
                self._state, self._want = "skippable", 4
            else:
                raise _corrupt("zstd: unknown frame magic")
        elif state == "skippable":
            self._skip = int.from_bytes(field, "little")
            self._state, self._want = "magic", 4
        elif state == "descriptor":
            d = field[0]
            single_segment = d >> 5 & 1
            self._checksum = bool(d & 4)
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[d & 3] + (single_segment, 2, 4, 8)[d >> 6]
            self._state, self._want = ("header", rest) if rest else ("block", 3)
        elif state == "header":
            self._state, self._want = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            block_type = header >> 1 & 3
            if block_type == 3:
                raise _corrupt("zstd: reserved block type")
            self._skip = 1 if block_type == 1 else header >> 3  # an RLE block stores one byte
            if not header & 1:
                self._state, self._want = "block", 3
            elif self._checksum:
                self._state, self._want = "checksum", 4
            else:
                self._state, self._want = "magic", 4
        else:  # checksum
            self._state, self._want = "magic", 4


class _Stop(Exception):
    """Tells the decompressing thread its reader has gone."""


def _in_thread(source: Iterator[bytes]) -> Generator[bytes, None, None]:
    """Run ``source`` on a worker thread, QUEUE_CHUNKS ahead of the consumer. zlib, zstd, sha256 and file reads
    release the GIL, so decompression overlaps the writes the consumer makes (as `tar -z` overlaps gzip)."""
    handoff: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_CHUNKS)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        handoff.put(item)
        if stop.is_set():
            raise _Stop

    def run() -> None:
        try:
            for chunk in source:
                put(chunk)
            put(None)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the consumer, which raises it
            with contextlib.suppress(_Stop):
                put(exc)

    worker = threading.Thread(target=run, name="moorage-layer-decompress", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting for room in the queue
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.01)
        worker.join()


# --- the tar reader -------------------------------------------------------------------------------------------


class TarReader:
    """POSIX ustar, PAX and GNU tar headers from a stream of chunks; the content of the current member is copied
    straight from the chunks to a file descriptor. The common cases (a header or a small file inside the current
    chunk) take a fast path: per-member Python work is what makes an unpacker slower than tar."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._base = 0  # stream offset of _buf[0]
        self._left = 0  # bytes of the current member not yet consumed, padding included
        self._member = b""

    def _more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._base += len(self._buf)
        self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
        return True

    def _read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        p = self._pos
        if p + n <= len(self._buf):
            self._pos = p + n
            return self._buf[p : p + n]
        parts = []
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._more():
                    break
                continue
            k = min(n, avail)
            parts.append(self._buf[self._pos : self._pos + k])
            self._pos += k
            n -= k
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._more():
                    raise _corrupt(f'the stream ends inside member "{show_name(self._member)}"')
                continue
            k = min(n, avail)
            self._pos += k
            n -= k

    def take(self, size: int) -> memoryview | None:
        """The current member's ``size`` content bytes if the current chunk holds them all, else None."""
        p = self._pos
        if p + size > len(self._buf):
            return None
        self._pos = p + size
        self._left -= size
        return self._view[p : p + size]

    def copy_to(self, fd: int, size: int) -> None:
        """Write the current member's ``size`` content bytes to ``fd``."""
        self._left -= size
        p = self._pos
        if p + size <= len(self._buf):  # the whole content is in this chunk: one write
            self._pos = p + size
            view = self._view[p : p + size]
            while view:
                view = view[os.write(fd, view) :]
            return
        while size:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._more():
                    raise _corrupt(f'the stream ends inside member "{show_name(self._member)}"')
                continue
            k = min(size, avail)
            view = self._view[self._pos : self._pos + k]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += k
            size -= k

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        if self._left:
            if self._pos + self._left <= len(self._buf):
                self._pos += self._left
            else:
                self._skip(self._left)
            self._left = 0
        pax: dict[bytes, bytes] = {}
        long_name = long_link = None
        while True:
            offset = self._base + self._pos
            header = self._read(512)
            if len(header) < 512:
                if not header and not pax and long_name is None and long_link is None:
                    return None  # the stream stops at a member boundary, without end blocks: accepted, as Go does
                raise _corrupt(f"the stream ends inside the tar header at offset {offset}")
            if header == _ZERO_BLOCK:
                if pax or long_name is not None or long_link is not None:
                    raise _corrupt(f"an extended header at offset {offset} describes no member")
                return None
            _verify_checksum(header, offset)
            typeflag = header[156]
            if typeflag in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                size = _number(header[124:136], offset)
                if size > EXT_HEADER_MAX:
                    raise InvalidImage(f"layer header at offset {offset}: {size} byte extended header is too large")
                data = self._read(size)
                if len(data) < size:
                    raise _corrupt(f"the stream ends inside the extended header at offset {offset}")
                self._skip(-size % 512)
                if typeflag == _PAX:
                    pax.update(_parse_pax(data, offset))
                elif typeflag == _GNU_LONGNAME:
                    long_name = _cstring(data)
                elif typeflag == _GNU_LONGLINK:
                    long_link = _cstring(data)
                # a global PAX header is ignored, as containerd does
                continue
            member = _member(header, offset)
            if pax or long_name is not None or long_link is not None:
                _extend(member, offset, pax, long_name, long_link)
            if member.typeflag not in DATA_TYPES:
                member.size = 0  # header-only types carry no content whatever the size says (as Go and Python read)
            self._member = member.name
            self._left = member.size + (-member.size % 512)
            return member


def _member(header: bytes, offset: int) -> Member:
    """A member from a ustar/GNU header alone."""
    name = _cstring(header[0:100])
    if header[257:263] == b"ustar\0" and header[345]:  # POSIX prefix field (GNU uses these bytes otherwise)
        name = _cstring(header[345:500]) + b"/" + name
    typeflag = header[156]
    try:  # the usual NUL or space terminated octal; anything else takes the slow path
        mode = int(header[100:108].rstrip(b"\0 "), 8)
        uid = int(header[108:116].rstrip(b"\0 "), 8)
        gid = int(header[116:124].rstrip(b"\0 "), 8)
        size = int(header[124:136].rstrip(b"\0 "), 8)
        mtime = int(header[136:148].rstrip(b"\0 "), 8)
    except ValueError:
        mode, uid, gid, size, mtime = (_number(header[a:b], offset) for a, b in _NUMBER_FIELDS)
    if size < 0 or uid < 0 or gid < 0:
        raise InvalidImage(f'layer member "{show_name(name)}": negative size, uid or gid')
    devmajor = devminor = 0
    if typeflag in (CHR, BLK):
        devmajor = _number(header[329:337], offset)
        devminor = _number(header[337:345], offset)
    linkname = _cstring(header[157:257]) if header[157] else b""
    return Member(
        name, typeflag, size, mode & 0o7777, uid, gid, mtime * 1_000_000_000, linkname, devmajor, devminor, None
    )


_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148))


def _extend(m: Member, offset: int, pax: dict[bytes, bytes], long_name: bytes | None, long_link: bytes | None) -> None:
    """Apply the GNU long name/link and PAX records that preceded the header of ``m``."""
    if long_name is not None:
        m.name = long_name
    if long_link is not None:
        m.linkname = long_link
    if not pax:
        return
    m.name = pax.get(b"path") or m.name
    m.linkname = pax.get(b"linkpath") or m.linkname
    try:
        m.size = int(pax.get(b"size", m.size))
        m.uid = int(pax.get(b"uid", m.uid))
        m.gid = int(pax.get(b"gid", m.gid))
        if b"mtime" in pax:
            m.mtime_ns = int(Decimal(pax[b"mtime"].decode("ascii")) * 1_000_000_000)
    except (ValueError, ArithmeticError) as exc:
        raise InvalidImage(f"layer header at offset {offset}: malformed PAX number: {exc}") from exc
    if m.size < 0 or m.uid < 0 or m.gid < 0:
        raise InvalidImage(f'layer member "{show_name(m.name)}": negative size, uid or gid')
    for key, value in pax.items():
        if key.startswith(_XATTR_PREFIX):
            if m.xattrs is None:
                m.xattrs = {}
            m.xattrs[key[len(_XATTR_PREFIX) :]] = value
        elif key.startswith(b"GNU.sparse."):
            raise InvalidImage(f'layer member "{show_name(m.name)}": sparse files are not supported')


def _cstring(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _number(field: bytes, offset: int) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit of the first byte is set."""
    if field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(field[1:], "big") | (field[0] & 0x7F) << (8 * (len(field) - 1))
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise _corrupt(f"malformed number {field!r} in the tar header at offset {offset}") from None


def _verify_checksum(header: bytes, offset: int) -> None:
    """The header checksum is the sum of its bytes, the checksum field counted as spaces. Summing 512 bytes in
    Python costs more than the rest of the header, so the sum is taken modulo 65521 from zlib.adler32 (whose low
    half is 1 + that sum, mod 65521) and checked against the stored value, itself at most 512 * 255."""
    field = header[148:156]
    try:
        stored = int(field.rstrip(b"\0 "), 8)
    except ValueError:
        stored = _number(field, offset)
    total = (zlib.adler32(header) & 0xFFFF) - 1 - sum(field) + 256
    if 0 <= stored <= 512 * 255 and (stored - total) % 65521 == 0:
        return
    signed = struct.unpack("148b8x356b", header)  # some old writers summed signed chars
    if stored != sum(signed) + 256:
        raise _corrupt(f"bad tar header checksum at offset {offset}")


def _parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
    """PAX records, ``"<length> <key>=<value>\\n"``; values stay bytes (xattr values are binary)."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record_end = pos + length
        if length <= space - pos + 1 or record_end > end or data[record_end - 1] != 0x0A:
            raise _corrupt(f"malformed PAX record in the extended header at offset {offset}")
        key, eq, value = data[space + 1 : record_end - 1].partition(b"=")
        if not eq:
            raise _corrupt(f"malformed PAX record in the extended header at offset {offset}")
        records[key] = value
        pos = record_end
    return records
