"""The overlay snapshotter: one directory per unpacked layer, keyed by the layer's chain id.

A chain id names a layer together with every layer under it (OCI image spec, "ChainID"), so two images
sharing their first layers share those directories, and a container's root filesystem is an overlay mount
of its image's chain, topmost first. Layout under ``<root>/snapshots``::

    <chain hex>/        a committed layer, read-only from here on (an overlayfs lowerdir)
    .tmp/<random>/      a layer being unpacked; renamed to <chain hex> only once whole and synced
    .trash/<random>/    a layer being deleted; renamed here first so a half-deleted layer is never visible

The rename is the commit: a layer directory under its chain id is complete, and whatever a SIGKILL leaves
in .tmp or .trash is removed by :meth:`Snapshotter.repair` at the next start.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from moorage.durable import fsync_dir

_libc = ctypes.CDLL(None, use_errno=True)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (every file an unpack wrote) before the commit rename."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
    finally:
        os.close(fd)


class Snapshotter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        self.trash = root / ".trash"
        for path in (root, self.tmp, self.trash):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        algorithm, _, hex_part = chain_id.partition(":")
        if algorithm != "sha256" or len(hex_part) != 64:
            raise ValueError(f"not a chain id: {chain_id!r}")
        return self.root / hex_part

    def exists(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def prepare(self) -> Path:
        """A fresh empty directory to unpack one layer into."""
        path = self.tmp / uuid.uuid4().hex
        path.mkdir(mode=0o755)
        return path

    def commit(self, prepared: Path, chain_id: str) -> Path:
        """Publish an unpacked layer under its chain id; if another pull got there first, keep theirs."""
        target = self.path(chain_id)
        syncfs(prepared)
        try:
            os.rename(prepared, target)
        except OSError:
            if not target.is_dir():
                raise
            self.discard(prepared)
        fsync_dir(self.root)
        return target

    def discard(self, prepared: Path) -> None:
        shutil.rmtree(prepared, ignore_errors=True)

    def remove(self, chain_id: str) -> None:
        target = self.path(chain_id)
        if not target.exists():
            return
        doomed = self.trash / uuid.uuid4().hex
        os.rename(target, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def committed(self) -> Iterator[str]:
        for entry in os.scandir(self.root):
            if not entry.name.startswith("."):
                yield f"sha256:{entry.name}"

    def repair(self) -> list[str]:
        """Remove what a crash left mid-unpack or mid-delete; returns what was removed."""
        leftovers = [p for d in (self.tmp, self.trash) for p in d.iterdir()]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return [str(p) for p in leftovers]

    def lowerdirs(self, chain: Sequence[str]) -> str:
        """The overlay ``lowerdir=`` value for an image whose layers have ``chain`` ids, bottom first."""
        return ":".join(str(self.path(c)) for c in reversed(chain))
