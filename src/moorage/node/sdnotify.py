"""The systemd notification protocol (sd_notify(3)): tell the service manager that the daemon is ready, or stopping.

A unit of ``Type=notify`` (packaging/moorage.service) is started once the daemon sends ``READY=1``: moorage sends
it when the CRI socket is listening, so ``systemctl start moorage`` returns only when the kubelet can connect.
``STOPPING=1`` goes out when a graceful stop begins. The manager names its socket in ``$NOTIFY_SOCKET``: a
filesystem path, or an abstract name written with a leading ``@`` (a NUL byte on the wire). Without that
variable (not under systemd, or a unit of another type) nothing is sent. A failed send is logged, never fatal:
the runtime serves either way, and systemd reports a start that never became ready.

The variable is taken out of the daemon's environment when read, as sd_notify's ``unset_environment`` does: the
OCI runtime and conmon inherit that environment, and runc given a ``NOTIFY_SOCKET`` would wait for the container
itself to send READY=1.

Lifecycle::

    notifier = Notifier.from_environment()       # first thing: before any child process starts
    ...
    notifier.send("READY=1", f"MAINPID={os.getpid()}")   # after the socket is bound
    ...
    notifier.send("STOPPING=1")                  # when SIGTERM arrives
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)

ENV = "NOTIFY_SOCKET"


def address(value: str) -> str | bytes | None:
    """The datagram address ``$NOTIFY_SOCKET`` names: a path, the bytes of an abstract name (``@name``), or None
    for a value systemd never sets (empty, relative, or a vsock address, which moorage does not speak)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Where notifications go: the socket ``$NOTIFY_SOCKET`` named when the daemon started, or nowhere."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.target = address(value) if value else None
        if value and self.target is None:
            log.warning("NOTIFY_SOCKET is not a unix socket address; systemd will not be notified", notify_socket=value)

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read and remove ``$NOTIFY_SOCKET`` from this process's environment (children must not see it)."""
        return cls(os.environ.pop(ENV, ""))

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if the manager was told. No manager: False, silently."""
        if self.target is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.target)
        except OSError as exc:
            log.warning("cannot notify systemd", notify_socket=self.value, message=message.decode(), error=str(exc))
            return False
        return True
