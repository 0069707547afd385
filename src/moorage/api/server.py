"""The CRI gRPC server on its unix socket.

Before binding, a socket file left at the path is probed: if a daemon answers on it, starting is refused
(two runtimes on one socket would split the node's pods between them); if nothing answers, it is the stale
socket of a crashed run and is replaced. The socket is created with mode 0660 (root and its group): bound in a
private directory, given its mode there and renamed into place, so it is never reachable with another mode,
and the process umask is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import grpc

from moorage.api.dispatch import service_handler
from moorage.api.image_service import ImageService
from moorage.api.runtime_service import RuntimeService
from moorage.cri import IMAGE_SERVICE, RUNTIME_SERVICE
from moorage.errors import StartupError

SOCKET_MODE = 0o660
MAX_MESSAGE = 16 * 1024 * 1024  # the kubelet's own limit for CRI messages
MAX_SEND = 2 * MAX_MESSAGE + (1 << 20)  # an ExecSync answer holds up to 16 MiB of stdout and of stderr


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free to bind: create its parent, remove a stale socket, refuse a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; remove it or choose another socket path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: left behind by a run that crashed
        return
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise StartupError(f"cannot probe existing socket {path}: {exc}") from exc
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"another process is already serving on {path}; stop it or choose another socket path")


async def start(
    path: Path, runtime: RuntimeService, images: ImageService, extra: tuple[grpc.GenericRpcHandler, ...] = ()
) -> grpc.aio.Server:
    claim_socket_path(path)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_SEND),
        ],
    )
    server.add_generic_rpc_handlers(
        (service_handler(RUNTIME_SERVICE, runtime), service_handler(IMAGE_SERVICE, images), *extra)
    )
    # The socket never has a wider mode than SOCKET_MODE where clients can reach it: it is bound in a private
    # directory, given its mode there and renamed into place. (Not by setting the umask around the bind: the
    # umask is the process's, and other threads, gRPC's own among them, create files meanwhile.)
    private = Path(tempfile.mkdtemp(prefix=".s", dir=path.parent))  # mode 0700
    try:
        bound = private / "s"
        server.add_insecure_port(f"unix:{bound}")
        await server.start()
        os.chmod(bound, SOCKET_MODE)
        os.rename(bound, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return server


async def stop(server: grpc.aio.Server, path: Path, grace: float) -> None:
    await server.stop(grace)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
