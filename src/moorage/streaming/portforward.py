"""Port-forward on the streaming server: each forwarded connection is a data and an error stream, and the server
connects to the port on the pod's loopback, inside its net namespace (:meth:`StreamingRuntime.port_forward`).

Over SPDY (``portforward.k8s.io``, also tunneled through a WebSocket) the client opens an ``error`` and a
``data`` stream with the same ``requestID`` and the ``port`` per connection, as many as it likes. Over the
WebSocket channel protocol (``v4.channel.k8s.io``) a connection carries one forwarded connection per port of
the PortForward request, on channels 2i (data) and 2i+1 (error), each starting with the port as two
little-endian bytes, as the kubelet sends them.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Protocol

import structlog

from moorage.cri import pb
from moorage.errors import InvalidArgument, MoorageError
from moorage.streaming.channel import Duplex, socket_to_stream, stream_to_socket
from moorage.streaming.session import Session, Stream

if TYPE_CHECKING:
    from moorage.streaming.wschannels import Channels

log = structlog.get_logger(__name__)


class Forwarder(Protocol):
    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``port`` on the pod's loopback."""
        ...


async def over_spdy(runtime: Forwarder, session: Session, request: pb.PortForwardRequest) -> None:
    """Every data and error stream pair the client opens, forwarded until the session ends."""
    pairs: dict[str, dict[str, Stream]] = {}
    forwards: set[asyncio.Task[None]] = set()
    allowed = set(request.port)
    try:
        while (stream := await session.next_stream()) is not None:
            request_id = stream.header("requestID")
            pair = pairs.setdefault(request_id, {})
            pair[stream.header("streamType")] = stream
            if {"data", "error"} <= pair.keys():
                del pairs[request_id]
                data, error = pair["data"], pair["error"]
                error.discard()  # ours to write
                task = asyncio.create_task(
                    forward(runtime, request.pod_sandbox_id, data.header("port"), data, error, allowed=allowed)
                )
                forwards.add(task)
                task.add_done_callback(forwards.discard)
                task.add_done_callback(_log_failure)
    finally:
        for task in forwards:
            task.cancel()


async def over_channels(runtime: Forwarder, mux: Channels, request: pb.PortForwardRequest) -> None:
    """One connection per requested port, on its channel pair, until all of them end."""
    for i, port in enumerate(request.port):
        for channel in mux.channels[2 * i : 2 * i + 2]:
            await channel.write(struct.pack("<H", port))
    await asyncio.gather(
        *(
            forward(
                runtime,
                request.pod_sandbox_id,
                str(port),
                mux.channels[2 * i],
                mux.channels[2 * i + 1],
                allowed=set(),
                half_close=False,
            )
            for i, port in enumerate(request.port)
        )
    )


async def forward(
    runtime: Forwarder,
    sandbox_id: str,
    port_header: str,
    data: Duplex,
    error: Duplex,
    *,
    allowed: set[int],
    half_close: bool = True,
) -> None:
    """One forwarded connection: the pod's port to ``data``, or why not on ``error``. ``half_close``: the
    client's side can end on its own (SPDY's FIN); else the connection ends with the pod's side."""
    try:
        port = _port(port_header, allowed)
        reader, writer = await runtime.port_forward(sandbox_id, port)
    except (MoorageError, OSError) as exc:
        message = exc.message if isinstance(exc, MoorageError) else str(exc)
        data.discard()
        await error.write(f"error forwarding port {port_header} to pod {sandbox_id}: {message}".encode())
        await error.close()
        await data.close()
        return
    await error.close()

    to_pod = asyncio.create_task(stream_to_socket(data, writer))
    try:
        await socket_to_stream(reader, data)
        if half_close:  # the client may still send after the pod's side ended
            await to_pod
    except (ConnectionError, OSError):
        pass
    finally:
        to_pod.cancel()
        writer.close()
        data.discard()  # the pod's side is gone: more from the client must not hold up the session


def _port(header: str, allowed: set[int]) -> int:
    """The ``port`` header of a port-forward stream, checked: a TCP port, and one the request named."""
    try:
        port = int(header)
    except ValueError:
        raise InvalidArgument(f"port {header!r} is not a number") from None
    if not 0 < port < 65536:
        raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
    if allowed and port not in allowed:
        raise InvalidArgument(f"port {port} was not among the PortForward request's ports {sorted(allowed)}")
    return port


def _log_failure(task: asyncio.Task[None]) -> None:
    """A forward that failed in a way nobody waits for: logged, not left for 'Task exception was never retrieved'."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("port-forward connection failed", error=repr(exc))
