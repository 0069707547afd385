"""The streaming server: where the URLs of the Exec, Attach and PortForward RPCs lead.

The kubelet (or the API server it forwards to) calls Exec, gets ``http://<address>/exec/<token>`` and opens it
with an HTTP upgrade; the token names the request, is good for one connection and expires after
:data:`TOKEN_TTL` seconds, as in the kubelet's own streaming server. HTTP/1.1 is parsed with h11. A token is used
up only by a connection that is served: a refused upgrade leaves the URL for a client's fallback.

- ``Upgrade: SPDY/3.1``: a :class:`~moorage.streaming.session.Session`. Exec and attach speak the remote
  command protocol (:mod:`moorage.streaming.remotecommand`, ``X-Stream-Protocol-Version`` v4 down to
  channel.k8s.io); port-forward ``portforward.k8s.io`` (:mod:`moorage.streaming.portforward`).
- ``Upgrade: websocket`` (:mod:`moorage.streaming.websocket`, framed by wsproto): the ``Sec-WebSocket-Protocol``
  the client offers first among those :mod:`moorage.streaming.wschannels` speaks: for exec and attach
  ``v5.channel.k8s.io`` (with its close signal), ``v4.channel.k8s.io`` (the status JSON), ``channel.k8s.io``
  and the base64 variants; for port-forward ``SPDY/3.1+portforward.k8s.io`` (a SPDY session tunneled in
  binary messages, client-go's tunneling dialer) or ``v4.channel.k8s.io`` (a channel pair per requested port).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import h11
import structlog

from moorage.cri import pb
from moorage.errors import InvalidArgument, MoorageError, StartupError
from moorage.runtime.exec.exec_stream import ExecIO
from moorage.streaming import portforward, remotecommand
from moorage.streaming.admission import HANDSHAKE_TIMEOUT, Admission
from moorage.streaming.session import Session
from moorage.streaming.tokens import Request, Tokens

if TYPE_CHECKING:
    from moorage.streaming import websocket

log = structlog.get_logger(__name__)

STREAMS_TIMEOUT = 30.0  # to open every stream, once upgraded
MAX_REQUEST_BYTES = 64 << 10
PORT_FORWARD = "portforward.k8s.io"
MAX_WS_PORTS = 32  # port-forward over WebSocket channels: two channels each
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)  # exec's and attach's WebSocket channels


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
        upgrade = [u.lower() for u in headers.get("upgrade", [])]
        if upgrade == ["websocket"]:
            await self._serve_websocket(
                http, reader, writer, headers, pending=pending, url=(kind, token), authenticated=authenticated
            )
            return
        if upgrade != ["spdy/3.1"]:
            await _respond(
                http, writer, 400, f"upgrade to {headers.get('upgrade')} is not supported; use SPDY/3.1 or websocket"
            )
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
        if (pending := self._tokens.take(kind, token)) is None:  # expired, or taken by a racing connection meanwhile
            await _respond(http, writer, 404, f"no pending {kind} request for this URL (expired or used)")
            return
        authenticated()
        switch = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if protocol:
            switch.append(("X-Stream-Protocol-Version", protocol))
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=switch)))
        await writer.drain()
        await self._serve_spdy(Session(reader, writer, http.trailing_data[0], self._idle_timeout), pending, protocol)

    async def _serve_spdy(self, session: Session, pending: Request, protocol: str) -> None:
        """The SPDY session's streams: port-forward's pairs, or exec's and attach's once all are open."""
        runner = asyncio.create_task(session.run())
        try:
            if isinstance(pending, pb.PortForwardRequest):
                await portforward.over_spdy(self._runtime, session, pending)
                return
            options = remotecommand.Options(pending.stdin, pending.stdout, pending.stderr, pending.tty)
            try:
                channels = await remotecommand.accept_channels(session, options, protocol, STREAMS_TIMEOUT)
            except remotecommand.StreamsMissing as exc:
                log.warning("exec stream not used", container=pending.container_id, error=str(exc))
                return
            session.stop_accepting()
            await self._remote_command(pending, channels, protocol, runner)
        finally:
            await session.close()
            runner.cancel()

    async def _serve_websocket(
        self,
        http: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, list[str]],
        *,
        pending: Request,
        url: tuple[str, str],
        authenticated: Callable[[], None],
    ) -> None:
        """A WebSocket upgrade: the subprotocol the client offers first that we speak, as the kubelet chooses."""
        from moorage.streaming import websocket, wschannels  # noqa: PLC0415 - wsproto: imported after start-up

        kind, token = url
        port_forward = isinstance(pending, pb.PortForwardRequest)
        supported = wschannels.PORT_FORWARD if port_forward else wschannels.REMOTE_COMMAND
        offered = websocket.offered_protocols(headers)
        try:
            protocol = wschannels.negotiate(offered, supported)
            if protocol is None:
                raise websocket.HandshakeError(
                    403, f"none of the offered subprotocols {offered} is supported; supported: {sorted(supported)}"
                )
            spec = supported[protocol]
            if (
                isinstance(pending, pb.PortForwardRequest)
                and not spec.tunnel
                and not 0 < len(pending.port) <= MAX_WS_PORTS
            ):
                raise websocket.HandshakeError(
                    400, f"port-forward over {protocol or 'channel.k8s.io'} needs 1-{MAX_WS_PORTS} ports in the request"
                )
            answer = websocket.accept_headers(headers, protocol)
        except websocket.HandshakeError as exc:
            await _respond(http, writer, exc.status, exc.message, exc.headers)
            return
        if self._tokens.take(kind, token) is None:
            await _respond(http, writer, 404, f"no pending {kind} request for this URL (expired or used)")
            return
        authenticated()
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=answer)))
        await writer.drain()
        ws = websocket.WebSocket(reader, writer, http.trailing_data[0], self._idle_timeout)
        if spec.tunnel:
            tunnel = wschannels.Tunnel(ws)
            runner = asyncio.create_task(_pump(ws, tunnel.received, tunnel._ended))
            session = Session(tunnel, tunnel, idle_timeout=0)  # the WebSocket keeps the idle time
            try:
                await self._serve_spdy(session, pending, PORT_FORWARD)
            finally:
                runner.cancel()
            return
        if isinstance(pending, pb.PortForwardRequest):
            mux = wschannels.Channels(ws, spec, 2 * len(pending.port), set(range(0, 2 * len(pending.port), 2)))
        else:
            mux = wschannels.Channels(ws, spec, 5, {STDIN, RESIZE} if pending.stdin else {RESIZE})
        runner = asyncio.create_task(_pump(ws, mux.received, mux.end))
        try:
            if isinstance(pending, pb.PortForwardRequest):
                work = asyncio.create_task(portforward.over_channels(self._runtime, mux, pending))
                await asyncio.wait({work, runner}, return_when=asyncio.FIRST_COMPLETED)
                work.cancel()
                return
            await mux.announce(STDOUT if pending.stdout else STDERR if pending.stderr else ERROR)
            channels = remotecommand.Channels(
                error=mux.channels[ERROR],
                stdin=mux.channels[STDIN] if pending.stdin else None,
                stdout=mux.channels[STDOUT] if pending.stdout else None,
                stderr=mux.channels[STDERR] if pending.stderr else None,
                resize=mux.channels[RESIZE] if pending.tty else None,
            )
            await self._remote_command(pending, channels, remotecommand.V4 if spec.status else remotecommand.V1, runner)
        finally:
            await ws.close()
            runner.cancel()

    async def _remote_command(
        self,
        request: pb.ExecRequest | pb.AttachRequest,
        channels: remotecommand.Channels,
        protocol: str,
        runner: asyncio.Task[None],
    ) -> None:
        """Exec or attach with the client's channels, until it ends (then the outcome on the error channel) or the
        client goes away (``runner`` ends: then the command is killed)."""
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


async def _pump(ws: websocket.WebSocket, handler: websocket.Handler, end: Callable[[], None]) -> None:
    """The WebSocket's frames to ``handler`` until it closes; then ``end``."""
    try:
        await ws.run(handler)
    finally:
        end()


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
