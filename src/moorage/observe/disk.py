"""Disk usage of a directory tree (a container's writable layer) and the filesystem it is on.

The tree walk reads every file's metadata, so callers keep its result for a while (:mod:`moorage.observe.usage`
walks each layer periodically); the filesystem's numbers are one statvfs call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DiskUsage:
    timestamp: int
    used_bytes: int
    inodes: int


@dataclass(frozen=True)
class Filesystem:
    """The filesystem a path is on, as cAdvisor reports a container's: its device and capacity."""

    device: str
    """``major:minor``, as the metrics' ``device`` label."""
    size_bytes: int
    inodes: int
    inodes_free: int


def disk_usage(top: Path) -> DiskUsage:
    """Bytes allocated (st_blocks, each inode once, like ``du``) and inodes used under ``top``; 0 if it is gone."""
    timestamp = time.time_ns()
    seen: set[int] = set()
    used = 0

    def count(path: str) -> None:
        nonlocal used
        try:
            st = os.lstat(path)
        except OSError:
            return
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            used += st.st_blocks * 512

    if top.exists():
        count(str(top))
    for directory, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            count(os.path.join(directory, name))
    return DiskUsage(timestamp, used, len(seen))


def filesystem_of(path: Path) -> Filesystem | None:
    """The filesystem ``path`` is on (statvfs: total blocks and inodes, free inodes); None if ``path`` is gone."""
    try:
        device, fs = os.stat(path).st_dev, os.statvfs(path)
    except OSError:
        return None
    return Filesystem(f"{os.major(device)}:{os.minor(device)}", fs.f_blocks * fs.f_frsize, fs.f_files, fs.f_ffree)
