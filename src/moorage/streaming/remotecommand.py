"""Kubernetes' remote command protocol over SPDY (exec and attach): which streams the client opens, and how the
outcome is reported on the error stream.

Versions (``X-Stream-Protocol-Version``, the client's order of preference wins): ``v4.channel.k8s.io`` reports
the outcome as a JSON ``metav1.Status`` (Success, or Failure with reason NonZeroExitCode and the exit code as a
cause, which is how kubectl learns the exit code); ``v3`` adds the ``resize`` stream for a TTY (JSON
``{"Width": w, "Height": h}`` objects, one after another); ``v2`` and ``channel.k8s.io`` write a plain error
message. The client opens an ``error`` stream and one stream per requested channel (header ``streamType``);
the server waits for all of them before it starts the command.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from moorage.runtime.exec.exec_stream import Source
from moorage.streaming.channel import Duplex
from moorage.streaming.session import Session, Stream

log = structlog.get_logger(__name__)

V4, V3, V2, V1 = "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)
"""What the server speaks, newest first (kubectl asks for v4 first)."""


class StreamsMissing(Exception):
    """The client did not open the streams the request needs in time."""


@dataclass(frozen=True)
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass
class Channels:
    """The client's streams (SPDY) or channels (WebSocket) of an exec or attach."""

    error: Duplex
    stdin: Duplex | None = None
    stdout: Duplex | None = None
    stderr: Duplex | None = None
    resize: Duplex | None = None


def negotiate(offered: list[str]) -> str | None:
    """The first protocol the client offers that we speak; "" (the legacy v1) when it offers none."""
    if not offered:
        return ""
    return next((p for p in offered if p in PROTOCOLS), None)


async def accept_channels(session: Session, options: Options, protocol: str, timeout: float) -> Channels:
    """Wait for the client's streams: error, then each requested one (resize only for a TTY from v3 on)."""
    wanted = {"error"} | {name for name in ("stdin", "stdout", "stderr") if getattr(options, name)}
    if options.tty and protocol in (V4, V3):
        wanted.add("resize")
    found: dict[str, Stream] = {}

    async def gather() -> None:
        while not wanted <= found.keys():
            stream = await session.next_stream()
            if stream is None:
                raise StreamsMissing("the client went away before opening its streams")
            kind = stream.header("streamType")
            if kind not in wanted or kind in found:
                stream.discard()  # not one we asked for: answered, then ignored
                await stream.close()
                continue
            if kind in ("error", "stdout", "stderr"):
                stream.discard()  # ours to write: whatever the client sends on them is dropped
            found[kind] = stream

    try:
        await asyncio.wait_for(gather(), timeout)
    except TimeoutError:
        missing = ", ".join(sorted(wanted - found.keys()))
        raise StreamsMissing(f"timed out after {timeout:g} s waiting for the client's streams: {missing}") from None
    return Channels(**found)


MAX_RESIZE_BYTES = 1024
"""The longest one terminal size may be on the resize stream (``{"Width":65535,"Height":65535}`` is 30 bytes)."""


class ResizeDecoder:
    """The resize stream, sans I/O: bytes in, (width, height) out. Each size is a flat JSON object; each byte is
    looked at once (a size split across frames waits, and is not re-parsed with every frame), and a size longer
    than :data:`MAX_RESIZE_BYTES` is an error, as anything that is not a size object is."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # of the buffer, known to hold no "}"

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The sizes ``data`` completes. Raises ValueError on a malformed or overlong size."""
        self._buffer += data
        sizes: list[tuple[int, int]] = []
        while True:
            del self._buffer[: len(self._buffer) - len(self._buffer.lstrip())]
            end = self._buffer.find(b"}", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if self._scanned > MAX_RESIZE_BYTES:
                    raise ValueError(f"a terminal size longer than {MAX_RESIZE_BYTES} bytes on the resize stream")
                return sizes
            if end >= MAX_RESIZE_BYTES:
                raise ValueError(f"a terminal size longer than {MAX_RESIZE_BYTES} bytes on the resize stream")
            sizes.append(_size(bytes(self._buffer[: end + 1])))
            del self._buffer[: end + 1]
            self._scanned = 0


def _size(raw: bytes) -> tuple[int, int]:
    try:
        size = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a terminal size on the resize stream: {raw[:64]!r}: {exc}") from None
    if not isinstance(size, dict):
        raise ValueError(f"not a terminal size on the resize stream: {raw[:64]!r}")
    width, height = size.get("Width", 0), size.get("Height", 0)
    if not (isinstance(width, int) and isinstance(height, int) and 0 <= width < 65536 and 0 <= height < 65536):
        raise ValueError(f"not a terminal size on the resize stream: {raw[:64]!r}")
    return width, height


async def resizes(stream: Source) -> AsyncIterator[tuple[int, int]]:
    """The terminal sizes the client sends, as (width, height), until it closes the stream or sends something
    that is not a size (then the rest of the stream is dropped, as the kubelet stops reading it)."""
    decoder = ResizeDecoder()
    while chunk := await stream.read():
        try:
            sizes = decoder.feed(chunk)
        except ValueError as exc:
            log.warning("resize stream dropped", error=str(exc))
            while await stream.read():
                pass
            return
        for size in sizes:
            yield size


def outcome(protocol: str, exit_code: int | None, error: str, cmd: list[str]) -> bytes:
    """What goes on the error stream when the command ended: nothing for success before v4."""
    if protocol != V4:
        if error:
            return error.encode()
        if exit_code:
            return f"command terminated with non-zero exit code: exit code {exit_code}".encode()
        return b""
    if error:
        status = {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError"}
    elif exit_code:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: command {cmd} exited with {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status, separators=(",", ":")).encode()
