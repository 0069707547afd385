"""Running code inside a pod's net namespace from the daemon: setns(2) on a short-lived thread.

A thread that entered a namespace is never reused: it runs one function and ends, so nothing else ever runs in
the wrong namespace. What the function makes there stays there: a socket belongs for good to the namespace it was
created in, and ``/proc/thread-self/net/*`` shows that namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: Path) -> None:
    """setns(2) the calling thread into the net namespace pinned on ``path``, and check that it took."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
        raise RuntimeError(f"thread is not in the net namespace pinned on {path}")


def in_netns(path: Path, fn: Callable[[], T]) -> T:
    """``fn()`` run on a new thread inside the net namespace pinned on ``path``; its result or its exception."""
    result: list[T] = []
    failure: list[BaseException] = []

    def inside() -> None:
        try:
            enter_netns(path)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=inside, name="in-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
