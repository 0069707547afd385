"""Read one image layer blob as a stream of tar members: the reading half of ``unpack``.

``open_layer`` reads a blob once, front to back: a worker thread (``decompress``) reads the file, decompresses it
and hashes the tar bytes (the diff id), a few chunks ahead of the caller; the calling thread walks the tar headers
with a ``TarReader``::

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
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from moorage.errors import InvalidImage
from moorage.images.decompress import Compression, corrupt, decompressed, detect_compression, in_thread

__all__ = ["Compression", "Member", "TarReader", "detect_compression", "open_layer", "show_name"]

EXT_HEADER_MAX = 1 << 20
"""Most bytes of PAX and GNU long-name records before one member, together (xattrs included): Go's archive/tar,
which containerd unpacks with, takes no special file over 1 MiB either; many chained records must not add up."""

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
        chunks = in_thread(decompressed(f, kind, hash_update, blob, max_size))
        try:
            yield TarReader(chunks)
            for _ in chunks:
                pass
        finally:
            chunks.close()


def show_name(name: bytes) -> str:
    """A member name or other header bytes, for messages."""
    return name.decode("utf-8", "backslashreplace")


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
                    raise corrupt(f'the stream ends inside member "{show_name(self._member)}"')
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
                    raise corrupt(f'the stream ends inside member "{show_name(self._member)}"')
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
        extended = 0  # bytes of the extended headers read for this member
        while True:
            offset = self._base + self._pos
            header = self._read(512)
            if len(header) < 512:
                if not header and not pax and long_name is None and long_link is None:
                    return None  # the stream stops at a member boundary, without end blocks: accepted, as Go does
                raise corrupt(f"the stream ends inside the tar header at offset {offset}")
            if header == _ZERO_BLOCK:
                if pax or long_name is not None or long_link is not None:
                    raise corrupt(f"an extended header at offset {offset} describes no member")
                return None
            _verify_checksum(header, offset)
            typeflag = header[156]
            if typeflag in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                size = _number(header[124:136], offset)
                extended += size
                if extended > EXT_HEADER_MAX:
                    raise InvalidImage(
                        f"layer header at offset {offset}: extended headers of {extended} bytes for one member "
                        f"(at most {EXT_HEADER_MAX})"
                    )
                data = self._read(size)
                if len(data) < size:
                    raise corrupt(f"the stream ends inside the extended header at offset {offset}")
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
        raise corrupt(f"malformed number {field!r} in the tar header at offset {offset}") from None


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
        raise corrupt(f"bad tar header checksum at offset {offset}")


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
            raise corrupt(f"malformed PAX record in the extended header at offset {offset}")
        key, eq, value = data[space + 1 : record_end - 1].partition(b"=")
        if not eq:
            raise corrupt(f"malformed PAX record in the extended header at offset {offset}")
        records[key] = value
        pos = record_end
    return records
