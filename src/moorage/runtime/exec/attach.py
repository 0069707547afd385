"""Attach to a running container's stdio through its conmon (the Attach RPC, run when the client connects).

conmon keeps an ``attach`` socket (SOCK_SEQPACKET) in the bundle: each packet it sends is one byte naming the
pipe (2 stdout, 3 stderr) and the output that pipe produced since the client attached; what the client sends
goes to the container's stdin, when the container was created with ``stdin``. A resize is a line
``1 <height> <width>`` on the bundle's ``ctl`` fifo. The bundle's path can be longer than a socket address
allows, so the socket is reached through ``/proc/self/fd/<bundle fd>/attach``. Attaching ends when the
container exits (conmon closes the socket) or the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from moorage.errors import FailedPrecondition
from moorage.runtime.exec.exec_stream import ExecIO, Sink, Source, drain

STDOUT, STDERR = 2, 3  # conmon's pipe numbers (1 is stdin)
PACKET = 1 << 15


async def attach(bundle: Path, io: ExecIO) -> None:
    sock = await _connect(bundle)
    try:
        tasks = []
        if io.stdin is not None:
            tasks.append(asyncio.create_task(_feed(io.stdin, sock)))
        if io.resizes is not None:
            tasks.append(asyncio.create_task(_resize(io.resizes, bundle / "ctl")))
        try:
            await _relay(sock, io.stdout, io.stdout if io.tty else io.stderr)
        finally:
            for task in tasks:
                task.cancel()
    finally:
        sock.close()


async def _connect(bundle: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    directory = os.open(bundle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{directory}/attach")
    except OSError as exc:
        sock.close()
        raise FailedPrecondition(f"cannot attach through conmon's socket in {bundle}: {exc.strerror}") from exc
    finally:
        os.close(directory)
    return sock


async def _relay(sock: socket.socket, stdout: Sink | None, stderr: Sink | None) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            packet = await loop.sock_recv(sock, PACKET)
        except (ConnectionError, OSError):
            return
        if not packet:
            return
        sink = {STDOUT: stdout, STDERR: stderr}.get(packet[0])
        if sink is not None and len(packet) > 1:
            await sink.write(packet[1:])


async def _feed(source: Source, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await source.read():
            for start in range(0, len(data), PACKET):
                await loop.sock_sendall(sock, data[start : start + PACKET])
        sock.shutdown(socket.SHUT_WR)  # the client closed stdin: conmon closes the container's if stdin_once
    except (ConnectionError, OSError):
        await drain(source)


async def _resize(sizes: AsyncIterator[tuple[int, int]], ctl: Path) -> None:
    async for width, height in sizes:
        with contextlib.suppress(OSError):
            fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, f"1 {height} {width}\n".encode())
            finally:
                os.close(fd)
