"""The CRI socket is made with its mode from the first moment, and the process umask is never changed for it
(other threads create files meanwhile: a changed umask would give them the wrong modes)."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any, cast

from moorage.api import server


def _umask() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


def test_the_socket_gets_its_mode_without_a_change_of_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "run" / "moorage.sock"
    original = _umask()
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(_umask())

    async def serve() -> int:
        no_service = cast(Any, object())  # every RPC is refused, and none is made
        srv = await server.start(path, no_service, no_service)
        try:
            return stat.S_IMODE(path.stat().st_mode)
        finally:
            await server.stop(srv, path, 0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the watcher gets its turns while the socket is made
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        mode = asyncio.run(serve())
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(interval)
    assert seen == {original}
    assert mode == server.SOCKET_MODE
    assert os.listdir(path.parent) == []  # the private directory it was bound in is gone, and so is the socket
