"""Exec, attach and port-forward through k8s.io/client-go's own streaming clients (Kubernetes 1.37, the code in
kubectl, crictl and the API server's proxies): the SPDY executor, the WebSocket executor (v5.channel.k8s.io, or
v4 when asked), the fallback executor, and the port forwarder over SPDY, over SPDY tunneled in a WebSocket, and
with the fallback dialer. tests/clientgo, built by scripts/build-clientgo (make test builds it first)."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from moorage.cri import pb
from tests.fixtures.clientgo import clientgo as clientgo  # noqa: PLC0414 (the fixture)
from tests.fixtures.clientgo import run, run_echo_server
from tests.fixtures.pods import Pod
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.streams import assert_a_killed_client_kills, attach_url, exec_url

pytestmark = pytest.mark.integration

EXECUTORS = ["spdy", "websocket", "fallback"]


@pytest.fixture
def sleeper(pod: Pod) -> str:
    return pod.run("sleeper", "sleep", "1000")


@pytest.mark.parametrize("transport", [*EXECUTORS, "websocket-v4"])
def test_exec_stdout_stderr_and_exit_code(pod: Pod, sleeper: str, clientgo: Path, transport: str) -> None:
    flags = ["-transport", "websocket", "-protocols", "v4.channel.k8s.io"] if transport == "websocket-v4" else [
        "-transport", transport]  # fmt: skip
    url = exec_url(pod, sleeper, ["sh", "-c", "echo out; echo err >&2; echo more; exit 3"], stdout=True, stderr=True)
    done = run(clientgo, "exec", *flags, "-stderr", url)
    assert done.returncode == 3, done.stderr  # client-go's CodeExitError, from the v4 status
    assert done.stdout == b"out\nmore\n"
    assert done.stderr == b"err\n"

    ok = run(clientgo, "exec", *flags, exec_url(pod, sleeper, ["echo", "fine"], stdout=True))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, b"fine\n", b"")


@pytest.mark.parametrize("transport", EXECUTORS)
def test_exec_stdin_to_its_end(pod: Pod, sleeper: str, clientgo: Path, transport: str) -> None:
    """The whole of stdin, then its end (v5's close signal over WebSocket, a FIN over SPDY), then the rest."""
    data = b"".join(b"line %d\n" % i for i in range(20000))
    url = exec_url(pod, sleeper, ["sh", "-c", "cat; echo end"], stdin=True, stdout=True)
    done = run(clientgo, "exec", "-transport", transport, "-stdin", url, stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data + b"end\n"


@pytest.mark.parametrize("transport", EXECUTORS)
def test_exec_tty_is_sized_and_resized(pod: Pod, sleeper: str, clientgo: Path, transport: str) -> None:
    script = (
        "stty size; echo RESIZE-ME; i=0; "
        'while [ "$(stty size)" = "37 91" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; stty size; exit 4'
    )
    url = exec_url(pod, sleeper, ["sh", "-c", script], stdin=True, stdout=True, tty=True)
    done = run(clientgo, "exec", "-transport", transport, "-stdin", "-tty", "-width", "91", "-height", "37",
               "-resize-on", "RESIZE-ME", "-resize", "120x50", url)  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert done.stdout.decode().replace("\r\n", "\n").splitlines() == ["37 91", "RESIZE-ME", "50 120"]


@pytest.mark.parametrize("transport", EXECUTORS)
def test_a_disconnect_kills_the_command(pod: Pod, sleeper: str, clientgo: Path, transport: str) -> None:
    url = exec_url(pod, sleeper, ["sleep", "777"], stdout=True)
    assert_a_killed_client_kills([str(clientgo), "exec", "-transport", transport, url], "sleep 777")


@pytest.mark.parametrize("transport", EXECUTORS)
def test_attach_follows_output_and_feeds_stdin(pod: Pod, clientgo: Path, transport: str) -> None:
    container_id = pod.run("reader", "sh", "-c", "echo ready; cat; echo closed >&2", stdin=True, stdin_once=True)
    url = attach_url(pod, container_id, stdin=True, stdout=True, stderr=True)
    done = run(clientgo, "attach", "-transport", transport, "-stdin", "-stderr", url, stdin=b"hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout in (b"hello\n", b"ready\nhello\n")  # "ready" may come before the attach
    assert done.stderr == b"closed\n"
    assert pod.wait_exit(container_id, 20).exit_code == 0


def test_the_fallback_executor_falls_back_to_spdy_on_the_same_url(pod: Pod, sleeper: str, clientgo: Path) -> None:
    """A WebSocket subprotocol the server does not speak is refused without using up the URL: client-go's
    fallback executor then gets it served over SPDY."""
    url = exec_url(pod, sleeper, ["sh", "-c", "echo via spdy; exit 6"], stdout=True)
    ws_only = run(clientgo, "exec", "-transport", "websocket", "-protocols", "v9.channel.k8s.io", url)
    assert ws_only.returncode == 102
    done = run(clientgo, "exec", "-transport", "fallback", "-protocols", "v9.channel.k8s.io", url)
    assert (done.returncode, done.stdout) == (6, b"via spdy\n"), done.stderr


@pytest.mark.parametrize("transport", EXECUTORS)
def test_port_forward_carries_100_connections_through_one_session(pod: Pod, clientgo: Path, transport: str) -> None:
    run_echo_server(pod, clientgo, transport)
    with pod.node.client() as c:
        url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
    many = run(
        clientgo, "portforward", "-transport", transport, "-port", "8080", "-connections", "100", url, timeout=180
    )  # fmt: skip: all 100 open at once
    assert (many.returncode, many.stdout) == (0, b"OK 100\n"), b"\n".join(
        line for line in many.stderr.splitlines() if not line.startswith(b"Handling connection")
    )


def _websocket(url: str, subprotocol: str, send: list[bytes | str]) -> list[bytes | str]:
    """A wsproto client for the channel protocols no Go client speaks: the messages until the server closes."""

    parts = urlsplit(url)
    ws = WSConnection(ConnectionType.CLIENT)
    got: list[bytes | str] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(ws.send(Request(host=parts.netloc, target=parts.path, subprotocols=[subprotocol])))
        while True:
            data = conn.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    assert event.subprotocol == subprotocol
                    for message in send:
                        conn.sendall(
                            ws.send(TextMessage(message) if isinstance(message, str) else BytesMessage(message))
                        )
                elif isinstance(event, TextMessage | BytesMessage):
                    got.append(event.data if isinstance(event.data, str) else bytes(event.data))
                elif isinstance(event, CloseConnection):
                    if data:
                        conn.sendall(ws.send(event.response()))
                    return got
            if not data:
                return got


def test_exec_over_base64_channels(pod: Pod, sleeper: str) -> None:
    url = exec_url(pod, sleeper, ["sh", "-c", "head -c 5; echo; exit 2"], stdin=True, stdout=True)
    got = _websocket(url, "v4.base64.channel.k8s.io", ["0" + base64.b64encode(b"hello").decode()])
    assert got[0] == "1"  # the kubelet's empty first message on stdout
    assert "".join(base64.b64decode(m[1:]).decode() for m in got if isinstance(m, str) and m[:1] == "1") == "hello\n"
    status = json.loads(base64.b64decode(next(m for m in got if isinstance(m, str) and m[:1] == "3")[1:]))
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "2"}]


def test_port_forward_over_v4_channels(pod: Pod) -> None:
    pod.run("echo-server", "busybox", "nc", "-ll", "-p", "8080", "-e", "busybox", "head", "-n", "1")
    got: list[bytes | str] = []
    for _ in range(50):  # until the server listens
        with pod.node.client() as c:
            url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
        got = _websocket(url, "v4.channel.k8s.io", [b"\x00hello channels\n"])
        if b"\x00hello channels\n" in got:
            break
        time.sleep(0.2)
    port = struct.pack("<H", 8080)
    assert got[:2] == [b"\x00" + port, b"\x01" + port]  # each channel opens with the port
    assert b"".join(m[1:] for m in got[2:] if isinstance(m, bytes) and m[:1] == b"\x00") == b"hello channels\n"
