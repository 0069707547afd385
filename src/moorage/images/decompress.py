"""Decompress an image layer blob on a worker thread: the first stage of reading a layer (``tarstream``).

A blob is plain, gzip or zstd; ``detect_compression`` tells which from its first bytes. ``decompressed`` yields the
tar bytes in chunks of at most CHUNK bytes, each hashed first (the diff id) and counted against a size limit (layer
bombs); ``in_thread`` runs such a generator on a worker thread, QUEUE_CHUNKS chunks ahead of the consumer. Neither
gzip nor zstd output is ever produced more than a chunk at a time, and a stream cut short is told from a whole one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

import zstandard

from moorage.errors import InvalidImage, MoorageError, ResourceExhausted

Compression = Literal["gzip", "zstd", "none"]

CHUNK = 1 << 20  # bytes read from the blob, and the most a decompressor hands over at once
QUEUE_CHUNKS = 16  # chunks the decompressing thread may run ahead of the reader

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def corrupt(detail: str) -> InvalidImage:
    """The error for a layer stream that cannot be read to its end."""
    return InvalidImage(f"layer is truncated or corrupt: {detail}")


def detect_compression(head: bytes) -> Compression:
    """The compression of a blob, from its first bytes (four are enough)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
        return "zstd"  # a zstd frame, or a skippable frame (zstd:chunked layers may start with one)
    return "none"


def decompressed(
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
        raise corrupt(f"gzip: {exc}") from exc
    except zstandard.ZstdError as exc:
        raise corrupt(f"zstd: {exc}") from exc
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
        raise corrupt("the gzip stream ends early")


def _unzstd(f: BinaryIO) -> Iterator[bytes]:
    """Decompress every zstd frame of ``f``, CHUNK bytes at most per step. zstandard's reader ends quietly on a
    cut stream, so the frame headers are walked alongside to tell a whole stream from a truncated one."""
    frames = _ZstdFrames(f)
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], frames), read_size=CHUNK, read_across_frames=True
    )
    yield from iter(partial(reader.read, CHUNK), b"")
    if not frames.complete:
        raise corrupt("the zstd stream ends early")


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
                raise corrupt("zstd: unknown frame magic")
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
                raise corrupt("zstd: reserved block type")
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


def in_thread(source: Iterator[bytes]) -> Generator[bytes, None, None]:
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
