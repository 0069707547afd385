"""The client side of a streaming URL, for ``moorage exec``, ``attach`` and ``port-forward``: the HTTP upgrade to
SPDY/3.1 (h11), then the streams the server expects, as kubectl opens them.

Lifecycle::

    code = await remote_command(url, Terminal(stdin=True, tty=False), local)   # the command's exit code
    await forward(url, 8080, reader, writer)                                    # one forwarded connection
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from moorage.errors import MoorageError
from moorage.streaming import remotecommand
from moorage.streaming.channel import socket_to_stream, stream_to_socket
from moorage.streaming.session import Session, Stream

PORT_FORWARD = "portforward.k8s.io"


class StreamingError(MoorageError):
    """The streaming server refused the URL, or the command could not run."""


@dataclass(frozen=True)
class Options:
    stdin: bool
    tty: bool
    stderr: bool  # a separate stderr stream (never with a TTY)


@dataclass
class Local:
    """Where the remote streams go on this side."""

    read_stdin: Callable[[], Awaitable[bytes]]  # b"" at the end
    write_stdout: Callable[[bytes], None]
    write_stderr: Callable[[bytes], None]
    sizes: AsyncIterator[tuple[int, int]] | None = None  # the local terminal's (width, height), first and on change


async def connect(url: str, protocols: list[str]) -> tuple[Session, str, asyncio.Task[None]]:
    """The upgraded session, the protocol the server chose, and the task reading the session's frames."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise StreamingError(f"streaming URL {url!r}: want http://host:port/...")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    http = h11.Connection(h11.CLIENT)
    headers = [("Host", parts.netloc), ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols]
    writer.write(http.send(h11.Request(method="POST", target=parts.path or "/", headers=headers)))
    writer.write(http.send(h11.EndOfMessage()))
    await writer.drain()
    body = bytearray()
    status = 0
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(1 << 14)
            http.receive_data(data)
            if not data and status == 0:
                raise StreamingError(f"{url}: the server closed the connection without answering")
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            protocol = dict((k.decode().lower(), v.decode()) for k, v in event.headers).get(
                "x-stream-protocol-version", ""
            )
            session = Session(reader, writer, http.trailing_data[0])
            return session, protocol, asyncio.create_task(session.run())
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            writer.close()
            raise StreamingError(f"{url}: HTTP {status}: {body.decode(errors='replace').strip()}")


async def remote_command(url: str, options: Options, local: Local) -> int:
    """Run what an Exec or Attach URL names with ``local``'s stdio; the exit code (0 for an attach)."""
    session, protocol, runner = await connect(url, list(remotecommand.PROTOCOLS))
    try:
        error = await session.open({"streamType": "error"})
        stdin = await session.open({"streamType": "stdin"}) if options.stdin else None
        stdout = await session.open({"streamType": "stdout"})
        stderr = await session.open({"streamType": "stderr"}) if options.stderr and not options.tty else None
        resize = None
        if options.tty and protocol in (remotecommand.V4, remotecommand.V3):
            resize = await session.open({"streamType": "resize"})
        tasks = [asyncio.create_task(_drain(stdout, local.write_stdout))]
        if stderr is not None:
            tasks.append(asyncio.create_task(_drain(stderr, local.write_stderr)))
        side = []
        if stdin is not None:
            side.append(asyncio.create_task(_feed(local.read_stdin, stdin)))
        if resize is not None and local.sizes is not None:
            side.append(asyncio.create_task(_sizes(local.sizes, resize)))
        message = bytearray()
        while chunk := await error.read():
            message += chunk
        await asyncio.gather(*tasks)
        for task in side:
            task.cancel()
        return _exit_code(protocol, bytes(message))
    finally:
        await session.close()
        runner.cancel()


async def forward(url: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One local connection carried to ``port`` of the pod through a PortForward URL."""
    session, protocol, runner = await connect(url, [PORT_FORWARD])
    try:
        if protocol != PORT_FORWARD:
            raise StreamingError(f"{url}: the server chose {protocol!r}, not {PORT_FORWARD}")
        headers = {"port": str(port), "requestID": "0"}
        error = await session.open({"streamType": "error", **headers})
        data = await session.open({"streamType": "data", **headers})

        sending = asyncio.create_task(socket_to_stream(reader, data))
        message = bytearray()
        while chunk := await error.read():
            message += chunk
        if message:
            sending.cancel()
            raise StreamingError(message.decode(errors="replace"))
        await stream_to_socket(data, writer)
        sending.cancel()
    finally:
        writer.close()
        await session.close()
        runner.cancel()


async def _drain(stream: Stream, write: Callable[[bytes], None]) -> None:
    while chunk := await stream.read():
        write(chunk)


async def _feed(read: Callable[[], Awaitable[bytes]], stream: Stream) -> None:
    while data := await read():
        await stream.write(data)
    await stream.close()


async def _sizes(sizes: AsyncIterator[tuple[int, int]], stream: Stream) -> None:
    async for width, height in sizes:
        await stream.write(json.dumps({"Width": width, "Height": height}).encode() + b"\n")


def _exit_code(protocol: str, message: bytes) -> int:
    """The v4 status on the error stream (nothing from an older server means success)."""
    if not message:
        return 0
    if protocol != remotecommand.V4:
        raise StreamingError(message.decode(errors="replace"))
    try:
        status = json.loads(message)
    except json.JSONDecodeError as exc:
        raise StreamingError(f"the error stream holds no status: {message[:200]!r}") from exc
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message", "1"))
    raise StreamingError(str(status.get("message") or status))
