"""Write the content and metadata of a layer's small files on a worker thread, in batches: the third thread of
``unpack``. It makes only descriptor calls (write, fchown, fchmod, utime, close) on files the applier created.
"""

from __future__ import annotations

import errno
import os
import queue
import threading

from moorage.errors import InvalidImage, MoorageError, ResourceExhausted
from moorage.images.tarstream import show_name

BODY_BATCH = 32  # files handed to the worker at once
BODY_BATCHES_QUEUED = 4  # batches the worker may lag behind (bounds open descriptors and memory held)

Body = tuple[int, memoryview, int, int, int, int, bytes]  # fd, content, uid (-1: keep), gid, mode (-1), mtime, name


class BodyWriter:
    """Writes the content and metadata of small files, and closes them, on a worker thread, in batches.

    The main thread creates each file (every path operation stays there) and queues its descriptor; the worker
    only makes fd calls, so it cannot write anywhere but into a file already created. Those calls release the
    GIL, so they overlap the header parsing and path checks of the next members: on a layer of small files this
    is what brings the unpacker level with tar. The content is a view of a decompressed chunk, kept alive by it.
    """

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[list[Body] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._batch: list[Body] = []
        self._queued = 0  # batches handed over and not yet done
        self._error: MoorageError | None = None
        self._worker: threading.Thread | None = None

    def add(self, body: Body) -> None:
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
                    self._error = os_failure(show_name(name), exc)
                except Exception as exc:  # OverflowError from a huge uid or mtime, ...
                    self._error = InvalidImage(f'layer member "{show_name(name)}": {exc}')
                finally:
                    os.close(fd)
            self._done.put(None)


def os_failure(shown: str, exc: OSError) -> MoorageError:
    """The error for a failed file operation on layer member ``shown``: out of space is RESOURCE_EXHAUSTED, a
    name the file system refuses is the image's fault, anything else the node's."""
    detail = exc.strerror or str(exc)
    if exc.filename is not None:
        detail += f": {os.fsdecode(exc.filename)}"
    message = f'layer member "{shown}": {detail}'
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(message)
    if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
        return InvalidImage(message)
    return MoorageError(message)
