"""Apply one image layer blob (a tar stream, plain, gzip or zstd) into an empty directory, as an overlayfs lower layer.

This is the applier of containerd's overlay snapshotter. The layer is read once, as a stream, by three threads:
one reads the blob, decompresses it and hashes the tar bytes (the diff id); the calling thread parses tar headers
and makes every path operation (create, link, remove, check); a third writes the content and metadata of small
files through the descriptors the calling thread opened. zlib, zstd, sha256 and file I/O release the GIL, so the
three overlap as ``tar -xz`` overlaps gzip and tar. OCI whiteouts become what overlayfs reads in a lower layer::

    dir/.wh.name        ->  dir/name: a character device 0:0 (an overlay whiteout)
    dir/.wh..wh..opq    ->  xattr trusted.overlay.opaque=y on dir (hides the children lower layers give dir)

The layer is untrusted, and nothing is ever written outside ``dest``:

- member names lose a leading ``/`` and ``./``; a name with a ``..`` component is refused;
- no symlink is ever followed: each parent directory is checked with ``lstat`` the first time it is used (then
  remembered until something replaces it), files are created with ``O_EXCL | O_NOFOLLOW``, and a metadata
  call that takes a path either does not follow symlinks or names an entry just checked or made, not a symlink;
- a hard link must name a regular file this layer already created, reached through real directories only;
- block devices and character devices other than 0:0 (a whiteout) are refused;
- ``trusted.overlay.*`` xattrs in PAX headers are dropped: they steer overlayfs (redirects, metacopy), and a
  layer says what overlayfs needs with whiteout files only.

Owners, modes (setuid, setgid, sticky included), mtimes and ``SCHILY.xattr.*`` xattrs are kept; a failing
``security.selinux`` is skipped (labels are the runtime's business).

A member that lands on an existing entry replaces it, as tar does (a directory stays a directory when the new
member is a directory too). On error, ``dest`` is left as it is: the caller removes the whole directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import shutil
import stat
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
QUEUE_CHUNKS = 16  # chunks the decompressing thread may run ahead of the writer
EXT_HEADER_MAX = 16 << 20  # largest PAX or GNU long-name record accepted (xattrs included)
BODY_MAX = 64 << 10  # files up to this size are written by the worker thread (larger ones: no gain)
BODY_BATCH = 32  # files handed to the worker at once
BODY_BATCHES_QUEUED = 4  # batches the worker may lag behind (bounds open descriptors and memory held)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZERO_BLOCK = bytes(512)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPAQUE = b".wh..wh..opq"
_WHITEOUT = b".wh."
_OPAQUE_XATTR = b"trusted.overlay.opaque"
_XATTR_PREFIX = b"SCHILY.xattr."

# Tar type flags (bytes of the typeflag field).
_REG, _AREG, _CONTIG = ord("0"), 0, ord("7")
_LNK, _SYM, _CHR, _BLK, _DIR, _FIFO = (ord(c) for c in "123456")
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = (ord(c) for c in "xgLK")
_DATA_TYPES = (_REG, _AREG, _CONTIG)


@dataclass(frozen=True)
class LayerStats:
    diff_id: str  # "sha256:<hex>" of the whole uncompressed tar stream, read to its end
    size: int  # bytes of regular-file content written
    inodes: int  # entries created: files, directories, links, whiteouts, ...


def detect_compression(head: bytes) -> Compression:
    """The compression of a blob, from its first bytes (four are enough)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
        return "zstd"  # a zstd frame, or a skippable frame (zstd:chunked layers may start with one)
    return "none"


def apply_layer(blob: Path, dest: Path) -> LayerStats:
    """Unpack ``blob`` into the empty directory ``dest``; synchronous (run it in a thread).

    Raises InvalidImage for a malformed or unsafe layer, naming the member and the problem; ResourceExhausted
    when the disk is full; MoorageError for other I/O failures.
    """
    digest = hashlib.sha256()
    with open(blob, "rb", buffering=0) as f:
        kind = detect_compression(f.read(4))
        f.seek(0)
        chunks = _in_thread(_decompressed(f, kind, digest.update, blob))
        try:
            reader = _TarReader(chunks)
            writer = _Writer(dest)
            try:
                while (member := reader.next()) is not None:
                    writer.apply(member, reader)
                writer.finish()
            finally:
                writer.close()
            for _ in chunks:  # the end-of-archive blocks and any padding after them are part of the diff id
                pass
        finally:
            chunks.close()
    return LayerStats(f"sha256:{digest.hexdigest()}", writer.size, writer.inodes)


def _corrupt(detail: str) -> InvalidImage:
    return InvalidImage(f"layer is truncated or corrupt: {detail}")


# --- the decompressing thread ---------------------------------------------------------------------------------


def _decompressed(
    f: BinaryIO, kind: Compression, hash_update: Callable[[bytes], object], blob: Path
) -> Iterator[bytes]:
    """The tar bytes of the blob, in chunks of at most CHUNK bytes, each passed to ``hash_update`` first."""
    source: Iterator[bytes]
    if kind == "gzip":
        source = _gunzip(f)
    elif kind == "zstd":
        source = _unzstd(f)
    else:
        source = iter(partial(f.read, CHUNK), b"")
    try:
        for chunk in source:
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


@dataclass(slots=True)
class _Member:
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
        return _show(self.name)


class _TarReader:
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
                    raise _corrupt(f'the stream ends inside member "{_show(self._member)}"')
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
                    raise _corrupt(f'the stream ends inside member "{_show(self._member)}"')
                continue
            k = min(size, avail)
            view = self._view[self._pos : self._pos + k]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += k
            size -= k

    def next(self) -> _Member | None:
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
            if member.typeflag not in _DATA_TYPES:
                member.size = 0  # header-only types carry no content whatever the size says (as Go and Python read)
            self._member = member.name
            self._left = member.size + (-member.size % 512)
            return member


def _member(header: bytes, offset: int) -> _Member:
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
        raise InvalidImage(f'layer member "{_show(name)}": negative size, uid or gid')
    devmajor = devminor = 0
    if typeflag in (_CHR, _BLK):
        devmajor = _number(header[329:337], offset)
        devminor = _number(header[337:345], offset)
    linkname = _cstring(header[157:257]) if header[157] else b""
    return _Member(
        name, typeflag, size, mode & 0o7777, uid, gid, mtime * 1_000_000_000, linkname, devmajor, devminor, None
    )


_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148))


def _extend(m: _Member, offset: int, pax: dict[bytes, bytes], long_name: bytes | None, long_link: bytes | None) -> None:
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
        raise InvalidImage(f'layer member "{_show(m.name)}": negative size, uid or gid')
    for key, value in pax.items():
        if key.startswith(_XATTR_PREFIX):
            if m.xattrs is None:
                m.xattrs = {}
            m.xattrs[key[len(_XATTR_PREFIX) :]] = value
        elif key.startswith(b"GNU.sparse."):
            raise InvalidImage(f'layer member "{_show(m.name)}": sparse files are not supported')


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


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


# --- the writer -----------------------------------------------------------------------------------------------


def _normalize(name: bytes) -> bytes | None:
    """``name`` relative to the layer root without empty or ``.`` components; None if it has a ``..`` one."""
    if not name.startswith((b"/", b".")) and b"/." not in name and b"//" not in name and b"\0" not in name:
        return name[:-1] if name.endswith(b"/") else name  # already clean: the usual case
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts or b"\0" in name:
        return None
    return b"/".join(parts)


class _Writer:
    """Creates members under ``dest``. ``_dirs`` holds the paths (relative, normalized) known to be real
    directories, each ancestor included; whatever removes a directory forgets it and everything under it."""

    def __init__(self, dest: Path) -> None:
        self._root = os.fsencode(os.path.abspath(dest))
        self._dirs: set[bytes] = {b""}
        self._setgid_dirs: set[bytes] = {b""} if os.lstat(self._root).st_mode & stat.S_ISGID else set()
        self._dir_times: dict[bytes, int] = {}  # set last: creating children changes a directory's mtime
        # What a new file gets without asking, to skip fchown and fchmod when that is already right. A default
        # ACL replaces the umask: then every mode is set explicitly.
        self._owner = (os.geteuid(), os.getegid())
        self._umask = 0o777 if _has_default_acl(self._root) else _umask()
        self._bodies = _Bodies()
        self.size = 0
        self.inodes = 0

    def _path(self, rel: bytes) -> bytes:
        return self._root + b"/" + rel if rel else self._root

    def apply(self, m: _Member, reader: _TarReader) -> None:
        rel = _normalize(m.name)
        if rel is None:
            raise InvalidImage(f'layer member "{m.shown}": path leaves the layer')
        try:
            self._apply(m, rel, reader)
        except OSError as exc:
            raise _os_failure(m.shown, exc) from exc
        except (OverflowError, ValueError) as exc:
            raise InvalidImage(f'layer member "{m.shown}": {exc}') from exc

    def _apply(self, m: _Member, rel: bytes, reader: _TarReader) -> None:
        parent, _, base = rel.rpartition(b"/")
        if parent not in self._dirs:
            self._walk(parent, m, create=True)
        if base.startswith(_WHITEOUT):
            self._whiteout(m, parent, base)
            return
        t = m.typeflag
        if not rel and t != _DIR:
            raise InvalidImage(f'layer member "{m.shown}": the layer root must be a directory')
        path = self._path(rel)
        if t in _DATA_TYPES:
            self._regular(m, rel, parent, path, reader)
        elif t == _DIR:
            self._directory(m, rel, path)
        elif t == _SYM:
            self._symlink(m, rel, path)
        elif t == _LNK:
            self._hardlink(m, rel, path)
        elif t == _FIFO or (t == _CHR and m.devmajor == m.devminor == 0):
            kind = stat.S_IFIFO if t == _FIFO else stat.S_IFCHR  # char 0:0 is an overlay whiteout already
            self._create(rel, path, lambda: os.mknod(path, kind | 0o600))
            self._set_metadata(m, path)
        elif t == _CHR:
            raise InvalidImage(f'layer member "{m.shown}": character device nodes are not allowed in image layers')
        elif t == _BLK:
            raise InvalidImage(f'layer member "{m.shown}": block device nodes are not allowed in image layers')
        else:
            raise InvalidImage(f'layer member "{m.shown}": unsupported tar entry type {chr(t)!r}')

    def close(self) -> None:
        """Wait for the file bodies under way, closing their descriptors (also after an error)."""
        self._bodies.close()

    def finish(self) -> None:
        """After the last member: wait for the file bodies, then set directory mtimes."""
        if (error := self._bodies.close()) is not None:
            raise error
        for rel, mtime_ns in self._dir_times.items():
            try:
                os.utime(self._path(rel), ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            except OSError as exc:
                raise MoorageError(f'layer directory "{_show(rel)}": setting its mtime: {exc}') from exc

    # --- member kinds ---

    def _regular(self, m: _Member, rel: bytes, parent: bytes, path: bytes, reader: _TarReader) -> None:
        mode = m.mode
        chmod = mode & 0o7000 or mode & self._umask  # else creating the file with ``mode`` gives ``mode``
        try:
            fd = os.open(path, _CREATE, 0o600 if chmod else mode)
        except FileExistsError:
            self._remove(rel, path)
            fd = os.open(path, _CREATE, 0o600 if chmod else mode)
        self.inodes += 1
        chown = (m.uid, m.gid) != self._owner or parent in self._setgid_dirs
        if not m.xattrs and m.size <= BODY_MAX and (content := reader.take(m.size)) is not None:
            self.size += m.size
            self._bodies.add((fd, content, m.uid if chown else -1, m.gid, mode if chmod else -1, m.mtime_ns, m.name))
            return
        try:
            if m.size:
                reader.copy_to(fd, m.size)
                self.size += m.size
            if chown:
                os.fchown(fd, m.uid, m.gid)
            if m.xattrs:
                self._set_xattrs(m, fd)
            if chmod:
                os.fchmod(fd, mode)  # after fchown, which clears setuid and setgid
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)

    def _directory(self, m: _Member, rel: bytes, path: bytes) -> None:
        if rel not in self._dirs:
            try:
                os.mkdir(path, 0o700)
                self.inodes += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)
                    os.mkdir(path, 0o700)
                    self.inodes += 1
            self._dirs.add(rel)
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.chmod(path, m.mode)  # a real directory: checked or created just above
        if m.mode & stat.S_ISGID:
            self._setgid_dirs.add(rel)
        else:
            self._setgid_dirs.discard(rel)
        self._dir_times[rel] = m.mtime_ns

    def _symlink(self, m: _Member, rel: bytes, path: bytes) -> None:
        if not m.linkname or b"\0" in m.linkname:
            raise InvalidImage(f'layer member "{m.shown}": symlink with an empty or malformed target')
        self._create(rel, path, lambda: os.symlink(m.linkname, path))
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def _hardlink(self, m: _Member, rel: bytes, path: bytes) -> None:
        target = _normalize(m.linkname)
        shown = f'layer member "{m.shown}": hardlink target "{_show(m.linkname)}"'
        if target is None:
            raise InvalidImage(f"{shown} leaves the layer")
        if rel.startswith(target + b"/") or target.startswith(rel + b"/"):
            raise InvalidImage(f"{shown} cannot be linked at this path")
        if target == rel:
            return  # a link to itself: nothing to do
        target_parent = target.rpartition(b"/")[0]
        if target_parent not in self._dirs:
            self._walk(target_parent, m, create=False, what=shown)
        target_path = self._path(target)
        try:
            st = os.lstat(target_path) if target else None
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise InvalidImage(f"{shown} is not a regular file created earlier in this layer")
        self._create(rel, path, lambda: os.link(target_path, path, follow_symlinks=False))

    def _whiteout(self, m: _Member, parent: bytes, base: bytes) -> None:
        if base == _OPAQUE:
            os.setxattr(self._path(parent), _OPAQUE_XATTR, b"y", follow_symlinks=False)  # a checked real dir
            return
        if base.startswith(_WHITEOUT + _WHITEOUT):
            return  # other .wh..wh. names are aufs bookkeeping, meaningless to overlayfs
        hidden = base[len(_WHITEOUT) :]
        if hidden in (b"", b".", b".."):
            raise InvalidImage(f'layer member "{m.shown}": whiteout of an invalid name')
        rel = parent + b"/" + hidden if parent else hidden
        path = self._path(rel)
        self._create(rel, path, lambda: os.mknod(path, stat.S_IFCHR, os.makedev(0, 0)))
        os.chown(path, m.uid, m.gid, follow_symlinks=False)

    # --- helpers ---

    def _walk(self, rel: bytes, m: _Member, *, create: bool, what: str = "") -> None:
        """Check that ``rel`` and its ancestors are real directories (creating missing ones when ``create``)."""
        what = what or f'layer member "{m.shown}"'
        prefix = b""
        for part in rel.split(b"/"):
            prefix = prefix + b"/" + part if prefix else part
            if prefix in self._dirs:
                continue
            path = self._path(prefix)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise InvalidImage(f"{what} is not a regular file created earlier in this layer") from None
                os.mkdir(path, 0o755)  # an implicit parent, as tar and containerd make them
                os.chmod(path, 0o755)
                self.inodes += 1
                self._dirs.add(prefix)
                continue
            if stat.S_ISLNK(mode):
                raise InvalidImage(f'{what}: parent "{_show(prefix)}" is a symlink')
            if not stat.S_ISDIR(mode):
                raise InvalidImage(f'{what}: parent "{_show(prefix)}" is not a directory')
            self._dirs.add(prefix)
            if mode & stat.S_ISGID:
                self._setgid_dirs.add(prefix)

    def _create(self, rel: bytes, path: bytes, make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self._remove(rel, path)
            make()
        self.inodes += 1

    def _remove(self, rel: bytes, path: bytes) -> None:
        """Remove the entry at ``rel`` that a new member replaces (never the layer root)."""
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)  # fd-based: follows no symlink inside
            below = rel + b"/"
            self._dirs = {d for d in self._dirs if d != rel and not d.startswith(below)}
            self._setgid_dirs = {d for d in self._setgid_dirs if d != rel and not d.startswith(below)}
            self._dir_times = {d: t for d, t in self._dir_times.items() if d != rel and not d.startswith(below)}
        else:
            os.unlink(path)

    def _set_metadata(self, m: _Member, path: bytes) -> None:
        """Owner, xattrs, mode and mtime of a node just created at ``path`` (not a symlink, not a directory)."""
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if m.xattrs:
            self._set_xattrs(m, path)
        os.chmod(path, m.mode)
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def _set_xattrs(self, m: _Member, target: int | bytes) -> None:
        assert m.xattrs is not None
        for key, value in m.xattrs.items():
            if key.startswith(b"trusted.overlay."):
                continue  # overlayfs's own (opaque, redirect, metacopy): a layer says those with whiteouts only
            if key == b"system.posix_acl_default":
                self._umask = 0o777
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                if key == b"security.selinux":
                    continue  # labels are the runtime's to set; a host without SELinux refuses them
                raise MoorageError(f'layer member "{m.shown}": setting xattr "{_show(key)}": {exc.strerror}') from exc


def _has_default_acl(path: bytes) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_default")
    except OSError:
        return False
    return True


_Body = tuple[int, memoryview, int, int, int, int, bytes]  # fd, content, uid (-1: keep), gid, mode (-1), mtime, name


class _Bodies:
    """Writes the content and metadata of small files, and closes them, on a worker thread, in batches.

    The main thread creates each file (every path operation stays there) and queues its descriptor; the worker
    only makes fd calls, so it cannot write anywhere but into a file already created. Those calls release the
    GIL, so they overlap the header parsing and path checks of the next members: on a layer of small files this
    is what brings the unpacker level with tar. The content is a view of a decompressed chunk, kept alive by it.
    """

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[list[_Body] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._batch: list[_Body] = []
        self._queued = 0  # batches handed over and not yet done
        self._error: MoorageError | None = None
        self._worker: threading.Thread | None = None

    def add(self, body: _Body) -> None:
        self._batch.append(body)
        if len(self._batch) >= BODY_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="moorage-layer-write", daemon=True)
            self._worker.start()
        if self._queued >= BODY_BATCHES_QUEUED:
            self._done.get()
            self._queued -= 1
        self._todo.put(self._batch)
        self._batch = []
        self._queued += 1
        if self._error is not None:
            raise self._error

    def close(self) -> MoorageError | None:
        """Wait until every queued file is written and closed; the first failure, if any."""
        if self._batch:
            if self._worker is None:
                self._flush()
            else:
                self._todo.put(self._batch)
                self._batch = []
        if self._worker is not None:
            self._todo.put(None)
            self._worker.join()
            self._worker = None
        return self._error

    def _run(self) -> None:
        while (batch := self._todo.get()) is not None:
            for fd, content, uid, gid, mode, mtime_ns, name in batch:
                try:
                    if self._error is None:
                        rest = content
                        while rest:
                            rest = rest[os.write(fd, rest) :]
                        if uid >= 0:
                            os.fchown(fd, uid, gid)
                        if mode >= 0:
                            os.fchmod(fd, mode)  # after fchown, which clears setuid and setgid
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                except OSError as exc:
                    self._error = _os_failure(_show(name), exc)
                except Exception as exc:  # OverflowError from a huge uid or mtime, ...
                    self._error = InvalidImage(f'layer member "{_show(name)}": {exc}')
                finally:
                    os.close(fd)
            self._done.put(None)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread); 0o777 if unknown, so
    that every mode is then set explicitly."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _os_failure(shown: str, exc: OSError) -> MoorageError:
    detail = exc.strerror or str(exc)
    if exc.filename is not None:
        detail += f": {os.fsdecode(exc.filename)}"
    message = f'layer member "{shown}": {detail}'
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(message)
    if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
        return InvalidImage(message)
    return MoorageError(message)
