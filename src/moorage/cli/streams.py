"""``moorage exec``, ``attach`` and ``port-forward``, as crictl has them: the RPC gives a streaming URL, and the
client side of :mod:`moorage.streaming.client` runs it with this terminal's stdio (raw, and resized with it,
for ``-t``) or a local listening port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import click

from moorage.cli.common import call, client_for
from moorage.cri import pb
from moorage.streaming.client import Local, Options, StreamingError, forward, remote_command


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("--interactive", "-i", is_flag=True, help="Send this stdin to the command.")
@click.option("--tty", "-t", is_flag=True, help="Run the command in a terminal (stdout and stderr merged).")
@click.option("--sync", "-s", is_flag=True, help="Run through ExecSync: no stdin, output once the command ends.")
@click.option("--exec-timeout", default=0, help="With --sync: seconds before the command is killed (0: none).")
@click.argument("container_ref", metavar="CONTAINER")
@click.argument("cmd", nargs=-1, required=True)
@click.pass_obj
def exec_command(
    obj: dict[str, Any],
    *,
    interactive: bool,
    tty: bool,
    sync: bool,
    exec_timeout: int,
    container_ref: str,
    cmd: tuple[str, ...],
) -> None:
    """Run CMD in a running container and exit with its exit code, as crictl exec does."""
    with client_for(obj) as client:
        if sync:
            request = pb.ExecSyncRequest(container_id=container_ref, cmd=list(cmd), timeout=exec_timeout)
            result = call(partial(client.runtime.ExecSync, request, timeout=None))
            sys.stdout.buffer.write(result.stdout)
            sys.stderr.buffer.write(result.stderr)
            sys.exit(result.exit_code)
        request_ = pb.ExecRequest(
            container_id=container_ref, cmd=list(cmd), stdin=interactive, tty=tty, stdout=True, stderr=not tty
        )
        url = call(partial(client.runtime.Exec, request_, timeout=client.timeout)).url
    sys.exit(_run(url, Options(stdin=interactive, tty=tty, stderr=not tty)))


@click.command("attach")
@click.option("--stdin", "-i", "interactive", is_flag=True, help="Send this stdin to the container.")
@click.option("--tty", "-t", is_flag=True, help="The container has a terminal: attach to it.")
@click.argument("container_ref", metavar="CONTAINER")
@click.pass_obj
def attach_command(obj: dict[str, Any], interactive: bool, tty: bool, container_ref: str) -> None:
    """Attach to a running container's output (and stdin, with -i) until it exits, as crictl attach does."""
    with client_for(obj) as client:
        request = pb.AttachRequest(container_id=container_ref, stdin=interactive, tty=tty, stdout=True, stderr=not tty)
        url = call(partial(client.runtime.Attach, request, timeout=client.timeout)).url
    sys.exit(_run(url, Options(stdin=interactive, tty=tty, stderr=not tty)))


@click.command("port-forward")
@click.option("--address", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.argument("pod_ref", metavar="POD")
@click.argument("ports", nargs=-1, required=True, metavar="LOCAL:REMOTE...")
@click.pass_obj
def port_forward_command(obj: dict[str, Any], address: str, pod_ref: str, ports: tuple[str, ...]) -> None:
    """Forward local ports to ports on a pod's loopback until interrupted, as crictl port-forward does.

    Each of PORTS is REMOTE or LOCAL:REMOTE; a local port of 0 picks a free one. Prints one line per port.
    """
    pairs = [_ports(p) for p in ports]
    with client_for(obj) as client:
        sandbox_id = call(partial(client.pod_status, pod_ref)).status.id

        def url() -> str:
            request = pb.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[remote for _, remote in pairs])
            with client_for(obj) as fresh:  # a URL serves one connection: each connection asks anew
                return call(partial(fresh.runtime.PortForward, request, timeout=fresh.timeout)).url

        url()  # the pod exists and is ready, before listening

    async def serve() -> None:
        servers = []
        for local, remote in pairs:

            async def accepted(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: int = remote
            ) -> None:
                try:
                    await forward(await asyncio.to_thread(url), remote, reader, writer)
                except (StreamingError, OSError) as exc:
                    click.echo(f"port {remote}: {exc}", err=True)

            server = await asyncio.start_server(accepted, address, local)
            bound = server.sockets[0].getsockname()[1]
            click.echo(f"Forwarding from {address}:{bound} -> {remote}")
            servers.append(server)
        await asyncio.gather(*(s.serve_forever() for s in servers))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


COMMANDS = (exec_command, attach_command, port_forward_command)


def _ports(spec: str) -> tuple[int, int]:
    local, _, remote = spec.rpartition(":")
    try:
        pair = (int(local) if local else int(remote), int(remote))
    except ValueError:
        raise click.BadParameter(f"{spec!r}: want REMOTE or LOCAL:REMOTE port numbers") from None
    if not 0 < pair[1] < 65536 or not 0 <= pair[0] < 65536:
        raise click.BadParameter(f"{spec!r}: ports are 1-65535 (local 0: any free one)")
    return pair


def _run(url: str, options: Options) -> int:
    with _raw_terminal(options.tty):
        try:
            return asyncio.run(_streams(url, options))
        except StreamingError as exc:
            raise click.ClickException(exc.message) from None
        except OSError as exc:
            raise click.ClickException(f"{url}: {exc}") from None


async def _streams(url: str, options: Options) -> int:
    def write(stream: Any, data: bytes) -> None:
        stream.buffer.write(data)
        stream.flush()

    local = Local(
        read_stdin=partial(_read, sys.stdin.fileno()),
        write_stdout=partial(write, sys.stdout),
        write_stderr=partial(write, sys.stderr),
        sizes=_terminal_sizes() if options.tty and sys.stdout.isatty() else None,
    )
    return await remote_command(url, options, local)


async def _read(fd: int) -> bytes:
    """The next bytes of ``fd``, waited for on the event loop (not a thread: a thread blocked in read() on a
    terminal would hold up the exit until a key is pressed). A regular file is read directly: it never blocks."""
    loop = asyncio.get_running_loop()
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(fd, _set, ready)
        except PermissionError:  # epoll refuses regular files
            return os.read(fd, 1 << 15)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            return os.read(fd, 1 << 15)
        except BlockingIOError:
            continue


def _set(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _terminal_sizes() -> AsyncIterator[tuple[int, int]]:
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            size = os.get_terminal_size(sys.stdout.fileno())
            yield size.columns, size.lines
            await changed.wait()
            changed.clear()
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


@contextlib.contextmanager
def _raw_terminal(wanted: bool) -> Iterator[None]:
    """This terminal in raw mode for a remote one (the remote terminal echoes and edits), restored after."""
    if not wanted or not sys.stdin.isatty():
        yield
        return
    saved = termios.tcgetattr(sys.stdin.fileno())
    tty.setraw(sys.stdin.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
