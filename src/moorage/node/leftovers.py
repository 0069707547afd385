"""Directories nothing owns any more (what a failed undo or a crash left), found and removed with their mounts.

Each takes the directory it works in (and ``proc``, where mountinfo is read) as a parameter, so it is tested
against a temp dir.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Container
from pathlib import Path

from moorage.errors import MoorageError
from moorage.node.cgroupinfo import parse_mountinfo

PROC = Path("/proc")
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def strays(directory: Path, owned: Container[str]) -> list[Path]:
    """Entries of ``directory`` whose name ``owned`` lacks (none when the directory does not exist)."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise MoorageError(f"cannot list {directory}: {exc.strerror}") from exc
    return [directory / name for name in names if name not in owned]


def mounts_under(path: Path, *, proc: Path = PROC) -> list[str]:
    """Mount points at or under ``path``, deepest (and latest) first."""
    real = os.path.realpath(path)
    prefix = real.rstrip("/") + "/"
    points = [m.mount_point for m in parse_mountinfo((proc / "self" / "mountinfo").read_text())]
    inside = [p for p in points if p == real or p.startswith(prefix)]
    return sorted(reversed(inside), key=lambda p: p.count("/"), reverse=True)


def remove_tree(path: Path, *, proc: Path = PROC) -> None:
    """Detach every mount at or under ``path`` (pinned namespaces, tmpfs, overlays, binds), then delete it."""
    for point in mounts_under(path, proc=proc):
        if _libc.umount2(os.fsencode(point), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise MoorageError(f"cannot unmount {point} (under {path}): {os.strerror(err)}")
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise MoorageError(f"cannot remove {path}: {exc.strerror}") from exc
