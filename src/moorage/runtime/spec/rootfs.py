"""Reading files of an untrusted container root filesystem without escaping it.

An image controls every byte of its root filesystem, symlinks included: ``/etc/passwd -> /host/etc/shadow``
must not make the runtime read a host file. :func:`secure_join` resolves a path the way the container itself
would see it (symlinks re-rooted at the rootfs, ``..`` stopping at ``/``), like Go's ``filepath-securejoin``
that containerd and CRI-O use; :func:`read_text` then opens the result without following a final symlink, so a
swap between the two steps fails rather than escaping.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_SYMLINKS = 255
MAX_FILE_BYTES = 4 << 20  # /etc/passwd and /etc/group are small; refuse a crafted multi-GB file


def secure_join(root: Path, path: str) -> Path:
    """``path`` inside ``root`` with every symlink resolved as if ``root`` were ``/``.

    The result is always ``root`` or below it. Components that do not exist are appended as they are.
    """
    base = os.path.realpath(root)
    pending = [p for p in path.split("/") if p]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(base, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(f"too many levels of symbolic links resolving {path!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        more = [p for p in target.split("/") if p]
        more.reverse()
        pending.extend(more)
    return Path(base, *resolved)


def read_text(root: Path, path: str) -> str | None:
    """The text of ``path`` inside ``root``, or None when it does not exist (or is not a regular file)."""
    target = secure_join(root, path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component became a symlink after secure_join
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(f"{target}: larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")
