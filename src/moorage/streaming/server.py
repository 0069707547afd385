"""The streaming server: where the URLs of the Exec, Attach and PortForward RPCs lead.

The kubelet (or the API server it forwards to) calls Exec, gets ``http://<address>/exec/<token>`` and opens it
with an HTTP upgrade to SPDY/3.1; the token names the request, is good for one connection and expires after
:data:`TOKEN_TTL` seconds, as in the kubelet's own streaming server. HTTP/1.1 is parsed with h11; the upgraded
connection is a :class:`~moorage.streaming.session.Session`. Exec and attach speak the remote command protocol
(:mod:`moorage.streaming.remotecommand`), port-forward ``portforward.k8s.io``: per forwarded connection the
client opens an ``error`` and a ``data`` stream with the same ``requestID`` and the ``port``, and the server
connects to that port on the pod's loopback, inside its net namespace.

WebSocket upgrades (``v5.channel.k8s.io``) are refused with 400 for now, leaving the URL usable: client-go's
fallback executor (crictl, kubectl) then retries it with SPDY, which the API server and the kubelet speak to
runtimes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import h11
import structlog

from moorage.api.cri import pb
from moorage.errors import InvalidArgument, MoorageError, StartupError
from moorage.runtime.exec_stream import ExecIO
from moorage.streaming import remotecommand
from moorage.streaming.admission import HANDSHAKE_TIMEOUT, Admission
from moorage.streaming.session import Session, Stream, socket_to_stream, stream_to_socket
from moorage.streaming.tokens import Tokens

log = structlog.get_logger(__name__)

STREAMS_TIMEOUT = 30.0  # to open every stream, once upgraded
MAX_REQUEST_BYTES = 64 << 10
PORT_FORWARD = "portforward.k8s.io"


class StreamingRuntime(Protocol):
    async def exec(self, container_id: str, cmd: list[str], io: ExecIO) -> int: ...

    async def attach(self, container_id: str, io: ExecIO) -> None: ...

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``port`` on the pod's loopback."""
        ...


class StreamingServer:
    def __init__(
        self, address: str, runtime: StreamingRuntime, idle_timeout: float = 0, open_files: int = 1024
    ) -> None:
        """``open_files``: the process's descriptor limit, which bounds how many connections it may hold."""
        self._address = address
        self._idle_timeout = idle_timeout
        self._runtime = runtime
        self._tokens = Tokens()
        self._admission = Admission.for_open_files(open_files)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.base_url = ""

    async def start(self) -> None:
        host, _, port = self._address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            self._server = await asyncio.start_server(self._connection, host, int(port or 0))
        except OSError as exc:
            raise StartupError(f"streaming.address {self._address}: cannot listen: {exc.strerror}") from exc
        bound = self._server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.base_url = f"http://{shown}:{bound[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    # --- the RPCs' side ------------------------------------------------------------------------------------

    def exec_url(self, request: pb.ExecRequest) -> str:
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        _check_stdio(request)
        return f"{self.base_url}/exec/{self._tokens.add('exec', request)}"

    def attach_url(self, request: pb.AttachRequest) -> str:
        _check_stdio(request)
        return f"{self.base_url}/attach/{self._tokens.add('attach', request)}"

    def port_forward_url(self, request: pb.PortForwardRequest) -> str:
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
        return f"{self.base_url}/portforward/{self._tokens.add('portforward', request)}"

    # --- connections -----------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self._admission.admit(host):
            writer.transport.abort()  # a reset, at once: the descriptor is free again
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        served = False

        def authenticated() -> None:
            nonlocal served
            served = True
            self._admission.authenticated(host)

        try:
            await self._serve(reader, writer, authenticated)
        except Exception as exc:  # one broken connection must not take the server down
            log.warning("streaming connection failed", error=str(exc))
        finally:
            self._connections.discard(task)
            self._admission.release(host, stranger=not served)
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authenticated: Callable[[], None]
    ) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            request = await asyncio.wait_for(_read_request(http, reader), HANDSHAKE_TIMEOUT)
        except (TimeoutError, h11.RemoteProtocolError, ConnectionError):
            return
        if request is None:
            return
        headers: dict[str, list[str]] = {name.decode().lower(): [] for name, _ in request.headers}
        for name, value in request.headers:
            headers[name.decode().lower()].append(value.decode(errors="replace"))
        kind, _, token = urlsplit(request.target.decode()).path.strip("/").partition("/")
        # The token is used up only by a connection that gets served: a client whose WebSocket upgrade is refused
        # falls back to SPDY on the same URL (client-go's fallback executor, crictl).
        pending = self._tokens.peek(kind, token) if request.method in (b"GET", b"POST") else None
        if pending is None:
            await _respond(
                http, writer, 404, f"no pending {kind or 'streaming'} request for this URL (expired or used)"
            )
            return
        if "upgrade" not in ",".join(headers.get("connection", [])).lower():
            await _respond(http, writer, 400, "a streaming request must ask for a connection upgrade")
            return
        if [u.lower() for u in headers.get("upgrade", [])] != ["spdy/3.1"]:
            await _respond(http, writer, 400, f"upgrade to {headers.get('upgrade')} is not supported; use SPDY/3.1")
            return
        offered = [v.strip() for value in headers.get("x-stream-protocol-version", []) for v in value.split(",")]
        if isinstance(pending, pb.PortForwardRequest):
            protocol = PORT_FORWARD if PORT_FORWARD in offered else None
            supported: tuple[str, ...] = (PORT_FORWARD,)
        else:
            protocol = remotecommand.negotiate(offered)
            supported = remotecommand.PROTOCOLS
        if protocol is None:
            extra = [("X-Accepted-Stream-Protocol-Versions", ", ".join(supported))]
            await _respond(http, writer, 403, f"none of the offered protocols {offered} is supported", extra)
            return
        if self._tokens.take(kind, token) is None:  # expired, or taken by a racing connection meanwhile
            await _respond(http, writer, 404, f"no pending {kind} request for this URL (expired or used)")
            return
        authenticated()
        switch = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if protocol:
            switch.append(("X-Stream-Protocol-Version", protocol))
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=switch)))
        await writer.drain()
        session = Session(reader, writer, http.trailing_data[0], self._idle_timeout)
        runner = asyncio.create_task(session.run())
        try:
            if isinstance(pending, pb.PortForwardRequest):
                await self._port_forward(session, pending)
            else:
                await self._remote_command(session, pending, protocol, runner)
        finally:
            await session.close()
            runner.cancel()

    async def _remote_command(
        self, session: Session, request: pb.ExecRequest | pb.AttachRequest, protocol: str, runner: asyncio.Task[None]
    ) -> None:
        """Exec or attach: the client's streams, the command (or the attachment) until it ends, the outcome."""
        options = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        try:
            channels = await remotecommand.accept_channels(session, options, protocol, STREAMS_TIMEOUT)
        except remotecommand.StreamsMissing as exc:
            log.warning("exec stream not used", container=request.container_id, error=str(exc))
            return
        io = ExecIO(
            stdin=channels.stdin,
            stdout=channels.stdout,
            stderr=channels.stderr,
            tty=request.tty,
            resizes=remotecommand.resizes(channels.resize) if channels.resize is not None else None,
        )
        cmd = list(request.cmd) if isinstance(request, pb.ExecRequest) else []
        work = (
            self._runtime.exec(request.container_id, cmd, io) if cmd else self._runtime.attach(request.container_id, io)
        )
        running: asyncio.Task[int | None] = asyncio.create_task(work)
        done, _ = await asyncio.wait({running, runner}, return_when=asyncio.FIRST_COMPLETED)
        if running not in done:  # the client went away: the command is killed
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
            return
        code, error = None, ""
        try:
            code = running.result()
        except MoorageError as exc:
            error = exc.message
        await channels.error.write(remotecommand.outcome(protocol, code, error, cmd))
        for stream in (channels.stdout, channels.stderr, channels.error):
            if stream is not None:
                await stream.close()

    async def _port_forward(self, session: Session, request: pb.PortForwardRequest) -> None:
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
                    task = asyncio.create_task(self._forward(request.pod_sandbox_id, pair, allowed))
                    forwards.add(task)
                    task.add_done_callback(forwards.discard)
                    task.add_done_callback(_log_failure)
        finally:
            for task in forwards:
                task.cancel()

    async def _forward(self, sandbox_id: str, pair: dict[str, Stream], allowed: set[int]) -> None:
        data, error = pair["data"], pair["error"]
        error.discard()  # ours to write
        try:
            port = _port(data.header("port"), allowed)
            reader, writer = await self._runtime.port_forward(sandbox_id, port)
        except (MoorageError, OSError) as exc:
            message = exc.message if isinstance(exc, MoorageError) else str(exc)
            data.discard()
            await error.write(f"error forwarding port {data.header('port')} to pod {sandbox_id}: {message}".encode())
            await error.close()
            await data.close()
            return
        await error.close()

        try:
            await asyncio.gather(stream_to_socket(data, writer), socket_to_stream(reader, data))
        except (ConnectionError, OSError):
            pass
        finally:
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


def _check_stdio(request: pb.ExecRequest | pb.AttachRequest) -> None:
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true (a terminal has one output stream)")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be true")


async def _read_request(http: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The request, read through its end (a body, if any, is dropped): h11 accepts a protocol switch only then."""
    request = None
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await reader.read(1 << 14))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            continue
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            return request
        else:
            return None  # the client closed the connection


async def _respond(
    http: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    message: str,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    body = (message + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *(extra or [])]
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
        writer.write(http.send(h11.Response(status_code=status, headers=headers)))
        writer.write(http.send(h11.Data(data=body)))
        writer.write(http.send(h11.EndOfMessage()))
        await writer.drain()
