"""Running things in a pod: ExecSync, and what the streaming server runs once a client connects (an exec in a
running container, an attach to its stdio, and connections to a port on a pod's loopback for port-forward).

A port is reached from inside the pod's net namespace: the socket is made on a short-lived thread that entered
the namespace (a socket belongs to the namespace it was created in for good), then connected from the event loop
to 127.0.0.1, or ::1 when nothing listens on IPv4. A hostNetwork pod's ports are the node's loopback ones.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from moorage.errors import FailedPrecondition, MoorageError
from moorage.node.netns import in_netns
from moorage.runtime.containers import Containers
from moorage.runtime.exec.attach import attach
from moorage.runtime.exec.exec_stream import ExecIO, exec_streaming
from moorage.runtime.exec.exec_sync import ExecResult, exec_sync
from moorage.runtime.pods.sandboxes import Sandboxes
from moorage.state.models import CONTAINER_RUNNING, READY

CONNECT_TIMEOUT = 10.0


class Execs:
    def __init__(self, sandboxes: Sandboxes, containers: Containers) -> None:
        self._sandboxes = sandboxes
        self._containers = containers

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> ExecResult:
        record = await self._containers.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot exec in it")
        runtime = await self._containers.runtime_of(record)
        return await exec_sync(runtime, container_id, self._containers.bundle(container_id), cmd, timeout)

    async def exec(self, container_id: str, cmd: list[str], io: ExecIO) -> int:
        record = await self._containers.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot exec in it")
        runtime = await self._containers.runtime_of(record)
        bundle = self._containers.bundle(container_id)
        sockets = Path(self._containers.config().state) / "tty"
        return await exec_streaming(runtime, container_id, bundle, cmd, io=io, sockets=sockets)

    async def attach(self, container_id: str, io: ExecIO) -> None:
        record = await self._containers.get(container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state}, not RUNNING; cannot attach")
        await attach(self._containers.bundle(container_id), io)

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sandbox = await self._sandboxes.get(sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is {sandbox.state}, not ready; cannot forward to it")
        netns = sandbox.status.namespaces.get("network", "")
        failures = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = await asyncio.to_thread(_socket_in, netns, family)
            try:
                sock.setblocking(False)
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
                return await asyncio.open_connection(sock=sock)
            except (OSError, TimeoutError) as exc:
                sock.close()
                failures.append(f"{host}: {exc.strerror if isinstance(exc, OSError) else 'timed out'}")
        raise MoorageError(f"cannot connect to port {port} in pod {sandbox_id} ({'; '.join(failures)})")


def _socket_in(netns: str, family: int) -> socket.socket:
    """A TCP socket of the net namespace pinned on ``netns`` (the node's when empty)."""
    if not netns:
        return socket.socket(family, socket.SOCK_STREAM)
    return in_netns(Path(netns), lambda: socket.socket(family, socket.SOCK_STREAM))
