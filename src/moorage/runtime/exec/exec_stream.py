"""Exec with live streams (the Exec RPC's command, run when the client connects to the streaming server):
``<runtime> exec`` with the container's process settings and the requested argv, its stdio wired to the
client's streams as they come.

Without a TTY the command gets pipes: stdin from the client (closed when the client closes it), stdout and
stderr to the client's streams (or discarded when not requested). With a TTY the runtime hands the terminal's
master end over a console socket (``--console-socket``, SCM_RIGHTS); the client's stdin goes into it, its
output to stdout, and each resize sets the window size. When the client goes away before the command ends,
the command is killed with everything it started (:func:`moorage.runtime.exec.exec_sync.kill_exec`). The result is
the command's exit code.

Lifecycle::

    io = ExecIO(stdin=s, stdout=o, tty=True, resizes=r)
    code = await exec_streaming(runtime, container_id, bundle, ["sh"], io=io, sockets=state / "tty")
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
import termios
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from moorage.errors import InvalidArgument, MoorageError
from moorage.runtime.containers.oci import OciRuntime, parse_runtime_stderr
from moorage.runtime.exec.exec_sync import kill_exec, write_process

READ_CHUNK = 1 << 15
CONSOLE_TIMEOUT = 30.0
FIRST_SIZE_WAIT = 1.0  # for a TTY client's first window size, sent as soon as its streams are open
ERROR_TAIL = 4096  # of the runtime's own stderr, kept for its error message


class Source(Protocol):
    async def read(self) -> bytes:
        """The next bytes; b"" at the end."""
        ...


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


@dataclass
class ExecIO:
    stdin: Source | None = None
    stdout: Sink | None = None
    stderr: Sink | None = None
    tty: bool = False
    resizes: AsyncIterator[tuple[int, int]] | None = None


async def exec_streaming(
    runtime: OciRuntime, container_id: str, bundle: Path, cmd: Sequence[str], *, io: ExecIO, sockets: Path
) -> int:
    if not cmd:
        raise InvalidArgument("cmd is required")
    size = None
    if io.tty and io.resizes is not None:
        size, rest = await first_size(io.resizes)
        io = replace(io, resizes=rest)
    process_file, pid_file = write_process(bundle, cmd, terminal=io.tty, size=size)
    try:
        if io.tty:
            return await _with_tty(runtime, container_id, process_file, pid_file, io=io, sockets=sockets)
        return await _with_pipes(runtime, container_id, process_file, pid_file, io)
    finally:
        process_file.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


async def first_size(
    sizes: AsyncIterator[tuple[int, int]],
) -> tuple[tuple[int, int] | None, AsyncIterator[tuple[int, int]]]:
    """The client's first window size, if it comes within FIRST_SIZE_WAIT, and the sizes still to come.

    A TTY command starts with the client's size (``process.consoleSize``): started first and resized after, a
    quick ``stty size`` could read 0 rows, which busybox's stty reports as an error."""
    pending = asyncio.ensure_future(anext(sizes, None))
    done, _ = await asyncio.wait({pending}, timeout=FIRST_SIZE_WAIT)
    if pending in done:
        return pending.result(), sizes
    return None, _after(pending, sizes)


async def _after(
    pending: asyncio.Future[tuple[int, int] | None], sizes: AsyncIterator[tuple[int, int]]
) -> AsyncIterator[tuple[int, int]]:
    try:
        if (first := await pending) is None:
            return
        yield first
        async for size in sizes:
            yield size
    finally:
        pending.cancel()


async def _with_pipes(runtime: OciRuntime, container_id: str, process_file: Path, pid_file: Path, io: ExecIO) -> int:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *runtime.exec_argv(container_id, process_file, pid_file=pid_file),
        stdin=pipe if io.stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=pipe if io.stdout is not None else asyncio.subprocess.DEVNULL,
        stderr=pipe,
        start_new_session=True,
    )
    tail = bytearray()
    pumps = []
    if proc.stdout is not None and io.stdout is not None:
        pumps.append(asyncio.create_task(_copy_out(proc.stdout, io.stdout)))
    assert proc.stderr is not None
    pumps.append(asyncio.create_task(_copy_out(proc.stderr, io.stderr, tail)))
    feeding = asyncio.create_task(_feed_pipe(io.stdin, proc.stdin)) if io.stdin is not None else None
    try:
        code = await proc.wait()
        await asyncio.gather(*pumps)
    except asyncio.CancelledError:
        await kill_exec(pid_file, proc)
        raise
    finally:
        if feeding is not None:
            feeding.cancel()
        for pump in pumps:
            pump.cancel()
    if code != 0 and b"exec failed" in tail:
        raise MoorageError(f"exec in container {container_id} failed: {parse_runtime_stderr(bytes(tail))}")
    return code


async def _copy_out(reader: asyncio.StreamReader, sink: Sink | None, tail: bytearray | None = None) -> None:
    while chunk := await reader.read(READ_CHUNK):
        if tail is not None:
            tail += chunk
            del tail[:-ERROR_TAIL]
        if sink is not None:
            await sink.write(chunk)


async def _feed_pipe(source: Source | None, pipe: asyncio.StreamWriter | None) -> None:
    if source is None or pipe is None:
        return
    try:
        while data := await source.read():
            pipe.write(data)
            await pipe.drain()
    except (ConnectionError, OSError):
        await drain(source)  # the command closed its stdin: what the client still sends goes nowhere
    finally:
        pipe.close()


async def drain(source: Source) -> None:
    """Read ``source`` to its end, dropping it: a client's stream must be read for the session to go on."""
    while await source.read():
        pass


_REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the detached command becomes our child
pid_file, argv = sys.argv[1], sys.argv[2:]
if subprocess.run(argv).returncode != 0:
    sys.exit(1)  # the runtime said why on stderr
pid = int(open(pid_file).read())
print("started", flush=True)
while True:
    found, status = os.waitpid(-1, 0)
    if found == pid:
        code = os.waitstatus_to_exitcode(status)
        print("exit", code if code >= 0 else 128 - code, flush=True)
        break
"""
"""A runtime running a TTY exec in the foreground relays the terminal through its own stdio and cannot resize
it, so the exec is detached (``--detach --console-socket``) under this helper: a child subreaper that runs the
runtime, then waits for the command and prints its exit code (128 + signal when killed)."""


async def _with_tty(
    runtime: OciRuntime, container_id: str, process_file: Path, pid_file: Path, *, io: ExecIO, sockets: Path
) -> int:
    sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = sockets / f"{uuid.uuid4().hex[:12]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = runtime.exec_argv(container_id, process_file, pid_file=pid_file, detach=True, console_socket=path)
    try:
        listener.bind(str(path))
        listener.listen(1)
        listener.setblocking(False)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _REAPER,
            str(pid_file),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            master = await _receive_console(listener, proc)
        except BaseException:
            await kill_exec(pid_file, proc)
            raise
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    tasks = [asyncio.create_task(_tty_out(master, io.stdout))]
    if io.stdin is not None:
        tasks.append(asyncio.create_task(_tty_in(io.stdin, master)))
    if io.resizes is not None:
        tasks.append(asyncio.create_task(_resize(io.resizes, master)))
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        report = (await proc.stdout.read()).decode(errors="replace").split()
        errors = await proc.stderr.read()
        await proc.wait()
        await asyncio.wait_for(asyncio.shield(tasks[0]), 5)  # the output still buffered in the terminal
    except asyncio.CancelledError:
        await kill_exec(pid_file, proc)
        raise
    except TimeoutError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        os.close(master)
    if report[-2:-1] != ["exit"]:
        raise MoorageError(
            f"exec in container {container_id} failed: {parse_runtime_stderr(errors) or 'no exit status'}"
        )
    return int(report[-1])


async def _receive_console(listener: socket.socket, proc: asyncio.subprocess.Process) -> int:
    """The terminal master the runtime sends to the console socket, or its error if it fails first."""
    loop = asyncio.get_running_loop()
    accepting = asyncio.create_task(loop.sock_accept(listener))
    exiting = asyncio.create_task(proc.wait())
    done, _ = await asyncio.wait({accepting, exiting}, timeout=CONSOLE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if accepting not in done:
        accepting.cancel()
        exiting.cancel()
        errors = await proc.stderr.read() if proc.stderr is not None and exiting in done else b""
        raise MoorageError(f"the runtime sent no terminal for the exec: {parse_runtime_stderr(errors) or 'timeout'}")
    exiting.cancel()
    conn, _ = accepting.result()
    with conn:
        conn.setblocking(True)
        _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 4096, 1)
    if not fds:
        raise MoorageError("the runtime's console socket message carried no terminal")
    os.set_blocking(fds[0], False)
    return fds[0]


async def _tty_out(master: int, sink: Sink | None) -> None:
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(master, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data = os.read(master, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every process holding the terminal's other end is gone
                return
            if not data:
                return
            if sink is not None:
                await sink.write(data)
    finally:
        loop.remove_reader(master)


async def _tty_in(source: Source, master: int) -> None:
    while data := await source.read():
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(master, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except OSError:
                await drain(source)
                return


async def _resize(sizes: AsyncIterator[tuple[int, int]], master: int) -> None:
    async for width, height in sizes:
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
