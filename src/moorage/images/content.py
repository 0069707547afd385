"""The content store: blobs (manifests, configs, compressed layers) addressed by their sha256 digest.

Layout under ``<root>/content``::

    blobs/sha256/<hex>      committed blobs: complete, verified, fsynced; never modified
    ingest/<hex>            a blob being written; kept across a crash or a dropped connection so the
                            download resumes where it stopped (HTTP Range), and re-hashed when reopened

A blob moves from ingest/ to blobs/ only by :meth:`Ingest.commit`: size and digest verified, the file fsynced,
renamed, the directory fsynced. So a blob present under blobs/ is always whole and right, whatever moment
the daemon was killed at, and nothing half-written is ever served.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from moorage.durable import fsync_dir
from moorage.errors import DataLoss

CHUNK = 1 << 20
STALE_INGEST_SECONDS = 24 * 3600


def _hex(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hex_part


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest_dir = root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def ingest(self, digest: str, size: int) -> Ingest:
        """Begin (or resume) writing the blob ``digest`` of ``size`` bytes (-1: size unknown)."""
        return Ingest(self, digest, size)

    def put(self, data: bytes, digest: str) -> Path:
        """Store a small blob held in memory (a manifest, a config), verified against ``digest``."""
        if self.has(digest):
            return self.path(digest)
        ingest = self.ingest(digest, len(data))
        ingest.reset()
        ingest.write(data)
        return ingest.commit()

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.blobs):
            yield f"sha256:{entry.name}"

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes used by committed blobs."""
        size = count = 0
        for entry in os.scandir(self.blobs):
            size += entry.stat(follow_symlinks=False).st_blocks * 512
            count += 1
        return size, count

    def sweep_ingest(self, keep: set[str], max_age: float = STALE_INGEST_SECONDS) -> list[str]:
        """Remove partial downloads nobody is writing that are older than ``max_age`` seconds."""
        removed = []
        now = time.time()
        for entry in os.scandir(self.ingest_dir):
            digest = f"sha256:{entry.name}"
            if digest in keep:
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime >= max_age:
                os.unlink(entry.path)
                removed.append(digest)
        return removed


class Ingest:
    """One blob being written. Not safe for two writers: the image service runs one download per digest."""

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.path = store.ingest_dir / _hex(digest)
        self._hash = hashlib.sha256()
        self._file = open(self.path, "ab+")  # noqa: SIM115 - closed by commit/close
        self.offset = 0
        self._rehash()

    def _rehash(self) -> None:
        """Hash what an earlier attempt left, so the download resumes after it."""
        self._file.seek(0)
        while chunk := self._file.read(CHUNK):
            self._hash.update(chunk)
            self.offset += len(chunk)
        if self.size >= 0 and self.offset > self.size:
            self.reset()

    def reset(self) -> None:
        """Start over from byte 0 (the server ignored our Range, or what we had was wrong)."""
        self._file.truncate(0)
        self._file.seek(0)
        self._hash = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes) -> None:
        if self.size >= 0 and self.offset + len(data) > self.size:
            self.discard()
            raise DataLoss(f"blob {self.digest} is longer than the {self.size} bytes its descriptor says")
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def commit(self) -> Path:
        """Verify, fsync and publish the blob; a mismatch discards the partial file and raises DataLoss."""
        self._file.flush()
        if self.size >= 0 and self.offset != self.size:
            got = self.offset
            self.discard()
            raise DataLoss(f"blob {self.digest} is truncated: got {got} of {self.size} bytes")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self.discard()
            raise DataLoss(f"blob {self.digest} does not match its digest (its content hashes to {actual})")
        os.fsync(self._file.fileno())
        self._file.close()
        target = self.store.path(self.digest)
        os.rename(self.path, target)
        fsync_dir(self.store.blobs)
        return target

    def close(self) -> None:
        """Stop writing but keep the partial file, so a later attempt resumes it."""
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
