"""The streaming server against a hostile or careless local client: a flood of idle connections, streams closed
with FIN alone, a resize stream that never ends its JSON, a port header out of range. Each must leave the
daemon serving, the CRI answering, and nothing pinned."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from moorage.cli.client import CriClient
from moorage.cri import pb
from tests.fixtures.pods import Pod
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.streams import client, daemon_peak_kib, exec_url
from tests.fixtures.streams import sleeper as sleeper  # noqa: PLC0414 (the fixture)
from tests.fixtures.streams import streamclient as streamclient  # noqa: PLC0414 (the fixture)
from tests.integration.daemon import DaemonProcess

FLOOD = 2000
FLOOD_SECONDS = 60  # the bound on opening the flood, whatever happens


def daemon_open_files(node: DaemonProcess) -> tuple[int, int]:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_daemon_raises_its_descriptor_limit_to_the_hard_one(unstarted: DaemonProcess) -> None:
    unstarted.open_files = (1024, 4096)
    unstarted.start()
    assert daemon_open_files(unstarted) == (4096, 4096)


def test_a_flood_of_idle_connections_leaves_the_cri_answering(unstarted: DaemonProcess) -> None:
    """2,000 idle connections to the streaming port of a daemon allowed 1,024 descriptors (hard limit, so
    raising it does not help): the server holds a bounded number, resets the rest, logs the flood once per
    interval, and every CRI call, on new connections, answers within 1 s meanwhile."""
    port = free_port()
    unstarted.write_config(f'[streaming]\naddress = "127.0.0.1:{port}"\n')
    unstarted.open_files = (1024, 1024)
    unstarted.start()
    assert daemon_open_files(unstarted) == (1024, 1024)

    flood: list[socket.socket] = []
    deadline = time.monotonic() + FLOOD_SECONDS
    try:
        while len(flood) < FLOOD and time.monotonic() < deadline:
            conn = socket.socket()
            flood.append(conn)
            conn.settimeout(5)
            with contextlib.suppress(OSError):  # a full backlog: counted anyway, it holds a descriptor here
                conn.connect(("127.0.0.1", port))
            if len(flood) % 250 == 0:
                _cri_answers(unstarted)
        assert len(flood) == FLOOD
        _cri_answers(unstarted)

        held = [c for c in flood if _still_open(c)]
        assert 0 < len(held) <= 64, len(held)  # the per-peer bound on connections without a token
        refusals = unstarted.log().count("refusing streaming connections")
        assert 1 <= refusals <= 1 + FLOOD_SECONDS // 10, refusals  # once per interval, not once per connection
        assert "Too many open files" not in unstarted.log()

        ended = time.monotonic() + 20  # the handshake deadline (5 s) closes what it held
        while any(_still_open(c) for c in held) and time.monotonic() < ended:
            time.sleep(0.2)
        assert not [c for c in held if _still_open(c)], "idle connections without a request outlived the deadline"
    finally:
        for conn in flood:
            conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # and it serves again
        conn.sendall(b"GET /exec/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 404 ")


def _cri_answers(node: DaemonProcess) -> None:
    with CriClient(node.endpoint, timeout=1) as c:  # a new connection each time: the CRI socket's accept too
        c.version()
        c.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=1)
        c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=1)


def _still_open(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.settimeout(5)


def _echo_url(pod: Pod, binary: Path) -> str:
    """A PortForward URL to 8080 of ``pod``, once its echo server there answers."""
    pod.run("echo-server", "busybox", "nc", "-ll", "-p", "8080", "-e", "busybox", "cat")
    for _ in range(50):
        with pod.node.client() as c:
            url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
        if client(binary, "portforward", url, "8080", stdin=b"up?\n").stdout == b"up?\n":
            break
        time.sleep(0.2)
    with pod.node.client() as c:
        return c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url


def test_streams_closed_with_fin_both_ways_are_freed(pod: Pod, streamclient: Path) -> None:
    """spdystream's Close is a FIN, not a reset: 100 connections in turn through one session, well past the
    64 streams a session may have open at once."""
    done = client(streamclient, "portforward-many", _echo_url(pod, streamclient), "8080", "100", timeout=120)
    assert (done.returncode, done.stdout) == (0, b"OK 100\n"), done.stderr


def test_a_port_out_of_range_is_answered_on_the_error_stream(pod: Pod, streamclient: Path) -> None:
    for port in ("70000", "-5", "http"):
        with pod.node.client() as c:
            url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id), timeout=30).url
        done = client(streamclient, "portforward", url, port, timeout=30)
        assert done.returncode == 102, done.stderr
        assert f"error forwarding port {port} to pod {pod.id}".encode() in done.stderr
        assert b"is not a TCP port" in done.stderr or b"is not a number" in done.stderr
    assert "Task exception was never retrieved" not in pod.node.log()
    assert "port-forward connection failed" not in pod.node.log()


def test_a_resize_stream_that_never_ends_its_json_is_bounded(
    pod: Pod,
    sleeper: str,
    streamclient: Path,
) -> None:
    """32 MiB of one unterminated JSON object after a good size: the size applies, the rest is dropped
    without being kept (the daemon's peak memory does not grow by it) and the command ends as usual."""
    before = daemon_peak_kib(pod.node)
    url = exec_url(pod, sleeper, ["sh", "-c", "sleep 2; stty size"], stdin=True, stdout=True, tty=True)
    args = ["-stdin", "-tty", "-width", "91", "-height", "37", "-resize-junk", str(32 << 20)]
    done = client(streamclient, "exec", url, *args, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().replace("\r\n", "\n") == "37 91\n"
    assert daemon_peak_kib(pod.node) - before < 16 << 10  # KiB
    assert "resize stream dropped" in pod.node.log()
    with pod.node.client() as c:  # the daemon is still at ease
        c.runtime.ListContainers(pb.ListContainersRequest(), timeout=5)
