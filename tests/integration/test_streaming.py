"""Exec, attach and port-forward through the streaming server, driven by a client built on moby/spdystream, the SPDY
library kubectl, the API server and the kubelet use (tests/streamclient, compiled from Debian's Go packages).

The Exec and PortForward RPCs answer a URL; the client upgrades to SPDY/3.1 there, negotiates the protocol
version, opens its streams, and learns the command's exit code from the v4 status on the error stream.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.pods import Pod
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.registry import Registry
from tests.fixtures.streams import (
    assert_a_killed_client_kills,
    attach_url,
    client,
    daemon_peak_kib,
    exec_url,
    processes,
    wait_for,
)
from tests.fixtures.streams import sleeper as sleeper  # noqa: PLC0414 (the fixture)
from tests.fixtures.streams import streamclient as streamclient  # noqa: PLC0414 (the fixture)
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = pytest.mark.integration


def test_exec_streams_stdout_and_stderr_and_reports_the_exit_code(pod: Pod, sleeper: str, streamclient: Path) -> None:
    script = "echo out; echo err >&2; echo more; exit 3"
    url = exec_url(pod, sleeper, ["sh", "-c", script], stdout=True, stderr=True)
    assert url.startswith("http://127.0.0.1:")
    done = client(streamclient, "exec", url, "-stderr")
    assert done.stdout == b"out\nmore\n"
    assert b"err\n" in done.stderr
    assert b"PROTOCOL: v4.channel.k8s.io" in done.stderr
    assert done.returncode == 3, done.stderr  # from the Failure status's ExitCode cause, as kubectl reads it

    ok = client(streamclient, "exec", exec_url(pod, sleeper, ["true"], stdout=True))
    assert (ok.returncode, ok.stdout) == (0, b"")


def test_exec_feeds_stdin_until_the_client_closes_it(pod: Pod, sleeper: str, streamclient: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KiB: many frames each way
    url = exec_url(pod, sleeper, ["sh", "-c", "cat; echo end"], stdin=True, stdout=True)
    done = client(streamclient, "exec", url, "-stdin", stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data + b"end\n"


def test_stdin_faster_than_the_command_reads_is_held_back_not_buffered(
    pod: Pod, sleeper: str, streamclient: Path
) -> None:
    """64 MiB of stdin for a command that reads it slowly, then for one that never reads it: the daemon's peak
    memory does not grow by what the client sent (the session stops reading the socket instead), and the end of
    a command that left its stdin unread still reaches the client."""
    data = b"x" * (64 << 20)
    before = daemon_peak_kib(pod.node)
    url = exec_url(pod, sleeper, ["sh", "-c", "sleep 2; wc -c"], stdin=True, stdout=True)
    done = client(streamclient, "exec", url, "-stdin", stdin=data, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, b"67108864"), done.stderr
    assert daemon_peak_kib(pod.node) - before < 32 << 10  # KiB: well under the 64 MiB sent

    url = exec_url(pod, sleeper, ["echo", "done"], stdin=True, stdout=True)
    unread = client(streamclient, "exec", url, "-stdin", stdin=data, timeout=120)
    assert (unread.returncode, unread.stdout) == (0, b"done\n"), unread.stderr


def test_exec_with_a_terminal_gets_its_size(pod: Pod, sleeper: str, streamclient: Path) -> None:
    url = exec_url(pod, sleeper, ["sh", "-c", "sleep 1; stty size; tty"], stdin=True, stdout=True, tty=True)
    done = client(streamclient, "exec", url, "-stdin", "-tty", "-width", "91", "-height", "37")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().replace("\r\n", "\n").splitlines()
    assert lines[0] == "37 91"  # rows cols, from the client's resize
    assert lines[1].startswith("/dev/pts/")


CRUN_SIZE_RACE = pytest.mark.xfail(
    reason="crun 1.8 seems to apply an exec's consoleSize after the command starts: under load a quick stty can "
    "still read 0 rows (seen 2 in 11 runs with other suites running); open, see the closing note",
    strict=False,
)


@pytest.mark.parametrize("handler", ["runc", pytest.param("crun", marks=CRUN_SIZE_RACE)])
def test_a_terminal_command_starts_with_the_clients_size(
    node: DaemonProcess, busybox: PushedImage, *, cgroup_parent: str, streamclient: Path, handler: str, tmp_path: Path
) -> None:
    # The client's first size comes a moment after its streams: the command, which reads the size at once,
    # still starts with it (busybox's stty reports 0 rows as an error).
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path, handler=handler)
    try:
        sleeper = pod.run("sleeper", "sleep", "1000")
        url = exec_url(pod, sleeper, ["sh", "-c", "stty size"], stdin=True, stdout=True, tty=True)
        done = client(streamclient, "exec", url, "-stdin", "-tty", "-width", "91", "-height", "37", "-size-delay",
                      "300ms")  # fmt: skip
    finally:
        with node.client() as c:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace(b"\r", b"") == b"37 91\n"


def test_older_protocols_get_a_plain_error_message(pod: Pod, sleeper: str, streamclient: Path) -> None:
    url = exec_url(pod, sleeper, ["sh", "-c", "exit 4"], stdout=True)
    done = client(streamclient, "exec", url, "-protocol", "v2.channel.k8s.io")
    assert b"PROTOCOL: v2.channel.k8s.io" in done.stderr
    assert done.returncode == 102
    assert b"ERROR: command terminated with non-zero exit code: exit code 4" in done.stderr


def test_a_url_serves_one_connection_and_only_protocols_it_speaks(pod: Pod, sleeper: str, streamclient: Path) -> None:
    url = exec_url(pod, sleeper, ["echo", "served"], stdout=True)
    refused = client(streamclient, "exec", url, "-protocol", "v9.channel.k8s.io")
    assert refused.returncode == 101
    assert b"HTTP 403" in refused.stderr
    assert b"ACCEPTED: v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io" in refused.stderr
    websocket = _raw_upgrade(url, "websocket", "v9.channel.k8s.io")
    assert websocket.startswith(b"HTTP/1.1 403 "), websocket
    assert b"'v5.channel.k8s.io'" in websocket  # the subprotocols it speaks
    old = _raw_upgrade(url, "websocket", "v5.channel.k8s.io", version=8)
    assert old.startswith(b"HTTP/1.1 426 "), old
    assert b"Sec-WebSocket-Version: 13" in old
    other = _raw_upgrade(url, "h2c", "")
    assert other.startswith(b"HTTP/1.1 400 "), other
    assert b"use SPDY/3.1 or websocket" in other
    served = client(streamclient, "exec", url)  # refusals leave the URL to the fallback: it serves once
    assert (served.returncode, served.stdout) == (0, b"served\n"), served.stderr
    again = client(streamclient, "exec", url)
    assert again.returncode == 101
    assert b"HTTP 404" in again.stderr


def _raw_upgrade(url: str, protocol: str, subprotocol: str, version: int = 13) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n"
            f"Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n".encode()
        )
        return b"".join(iter(lambda: conn.recv(4096), b""))


def test_a_command_that_cannot_start_is_reported_on_the_error_stream(
    pod: Pod, sleeper: str, streamclient: Path
) -> None:
    done = client(streamclient, "exec", exec_url(pod, sleeper, ["/no/such/program"], stdout=True))
    assert done.returncode == 103  # a Failure status without an exit code
    assert b"/no/such/program" in done.stderr


def test_a_client_that_goes_away_takes_the_command_with_it(pod: Pod, sleeper: str, streamclient: Path) -> None:
    url = exec_url(pod, sleeper, ["sleep", "777"], stdout=True)
    assert_a_killed_client_kills([str(streamclient), "exec", url], "sleep 777")


@pytest.mark.parametrize("tty", [False, True])
def test_a_client_that_goes_away_takes_everything_its_command_started(
    pod: Pod, sleeper: str, streamclient: Path, tty: bool
) -> None:
    script = "sleep 779 & (sleep 779 &); setsid sleep 779 & sleep 779"
    options = {"tty": True} if tty else {}
    url = exec_url(pod, sleeper, ["sh", "-c", script], stdout=True, **options)
    proc = subprocess.Popen([str(streamclient), "exec", url, *(["-tty"] if tty else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert wait_for(lambda: len(processes("sleep 779")) == 4, 20), "the exec never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not processes("sleep 779"), 20), "the exec's children outlived its client"


@pytest.fixture
def idle_node(registry: Registry) -> Iterator[DaemonProcess]:
    """A daemon that closes streaming connections idle for 2 s."""
    with running_node(registry.host, "[streaming]\nidle_timeout = 2\n") as node:
        yield node


def test_an_idle_connection_is_closed_and_its_command_killed(
    idle_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, streamclient: Path
) -> None:
    idle_pod = Pod(idle_node, busybox.name, cgroup_parent, tmp_path)
    try:
        container_id = idle_pod.run("sleeper", "sleep", "1000")
        url = exec_url(idle_pod, container_id, ["sleep", "778"], stdout=True)
        done = client(streamclient, "exec", url, timeout=60)  # no frame either way: the server hangs up
        assert b"PROTOCOL: v4.channel.k8s.io" in done.stderr
        assert wait_for(lambda: not processes("sleep 778"), 20), "the idle exec was not killed"
    finally:
        with idle_node.client() as c:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=idle_pod.id), timeout=60)


def test_bad_exec_requests_are_refused(pod: Pod, sleeper: str) -> None:
    cases = [
        (pb.ExecRequest(container_id=sleeper, cmd=["sh"], tty=True, stderr=True, stdout=True), "INVALID_ARGUMENT"),
        (pb.ExecRequest(container_id=sleeper, cmd=["sh"]), "INVALID_ARGUMENT"),
        (pb.ExecRequest(container_id=sleeper, stdout=True), "INVALID_ARGUMENT"),
        (pb.ExecRequest(container_id="f" * 64, cmd=["sh"], stdout=True), "NOT_FOUND"),
    ]
    with pod.node.client() as c:
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as err:
                c.runtime.Exec(request, timeout=30)
            assert err.value.code().name == code, request
        created = pod.create("never-started", "sleep", "1")
        with pytest.raises(grpc.RpcError) as err:
            c.runtime.Exec(pb.ExecRequest(container_id=created, cmd=["true"], stdout=True), timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not RUNNING" in str(err.value.details())


def test_attach_relays_output_until_the_container_exits(pod: Pod, streamclient: Path) -> None:
    container_id = pod.run("talker", "sh", "-c", "sleep 2; echo out; echo err >&2; sleep 0.5")
    done = client(streamclient, "attach", attach_url(pod, container_id, stdout=True, stderr=True), "-stderr")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"out\n"
    assert b"err\n" in done.stderr


def test_attach_feeds_stdin_and_closes_it_once(pod: Pod, streamclient: Path) -> None:
    container_id = pod.run("reader", "sh", "-c", "cat; echo closed", stdin=True, stdin_once=True)
    url = attach_url(pod, container_id, stdin=True, stdout=True)
    done = client(streamclient, "attach", url, "-stdin", stdin=b"hello\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello\nclosed\n"  # the client closed stdin: with stdin_once so did the container's
    assert pod.wait_exit(container_id, 20).exit_code == 0


def test_attach_to_a_terminal_gets_its_size(pod: Pod, streamclient: Path) -> None:
    container_id = pod.run("console", "sh", "-c", "sleep 2; stty size", stdin=True, tty=True)
    url = attach_url(pod, container_id, stdin=True, stdout=True, tty=True)
    done = client(streamclient, "attach", url, "-stdin", "-tty", "-width", "100", "-height", "40")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().replace("\r\n", "\n") == "40 100\n"


def test_attach_with_stdin_needs_a_container_with_stdin(pod: Pod, sleeper: str) -> None:
    with pod.node.client() as c, pytest.raises(grpc.RpcError) as err:
        c.runtime.Attach(pb.AttachRequest(container_id=sleeper, stdin=True, stdout=True), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without stdin" in str(err.value.details())


def test_port_forward_reaches_the_pods_loopback(pod: Pod, streamclient: Path) -> None:
    pod.run("echo-server", "busybox", "nc", "-ll", "-p", "8080", "-e", "busybox", "cat")
    with pod.node.client() as c:
        url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
    assert "/portforward/" in url
    done = None
    for _ in range(50):  # until nc listens
        done = client(streamclient, "portforward", url, "8080", stdin=b"hello over spdy\n")
        if done.returncode == 0:
            break
        time.sleep(0.2)
        with pod.node.client() as c:
            url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
    assert done is not None
    assert done.returncode == 0, done.stderr
    assert b"PROTOCOL: portforward.k8s.io" in done.stderr
    assert done.stdout == b"hello over spdy\n"

    with pod.node.client() as c:  # nothing listens on 8081 in the pod (the node's 8081 is not the pod's)
        url = c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id), timeout=30).url
    refused = client(streamclient, "portforward", url, "8081")
    assert refused.returncode == 102
    assert b"cannot connect to port 8081" in refused.stderr


def test_port_forward_to_an_unknown_pod_is_not_found(daemon: DaemonProcess) -> None:
    with daemon.client() as c, pytest.raises(grpc.RpcError) as err:
        c.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id="e" * 64, port=[80]), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(autouse=True)
def _no_stray_exec() -> Iterator[None]:
    yield
    for pid in processes("sleep 777") + processes("sleep 778") + processes("sleep 779"):
        os.kill(pid, signal.SIGKILL)


# --- the CLI's client side (moorage exec / attach / port-forward), against the same server ---------------------


def cli(node: DaemonProcess, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", node.endpoint, "--timeout", "60", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=90, check=False)


def test_moorage_exec_streams_and_exits_with_the_commands_code(pod: Pod, sleeper: str) -> None:
    done = cli(pod.node, "exec", sleeper[:12], "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (done.returncode, done.stdout) == (5, b"out\n"), done.stderr
    assert done.stderr == b"err\n"
    echoed = cli(pod.node, "exec", "-i", sleeper, "cat", stdin=b"typed\n")
    assert (echoed.returncode, echoed.stdout) == (0, b"typed\n"), echoed.stderr
    synced = cli(pod.node, "exec", "-s", sleeper, "sh", "-c", "echo sync; exit 2")
    assert (synced.returncode, synced.stdout) == (2, b"sync\n")
    missing = cli(pod.node, "exec", sleeper, "/no/such/program")
    assert missing.returncode == 1
    assert b"/no/such/program" in missing.stderr


def test_moorage_exec_t_carries_the_local_terminal(pod: Pod, sleeper: str) -> None:
    """Under script(1)'s terminal sized 77x22: the remote terminal gets that size, and output comes back raw."""
    command = (
        f"stty cols 77 rows 22; {sys.executable} -m moorage.cli.main --endpoint {pod.node.endpoint} "
        f"exec -t {sleeper} sh -c 'sleep 1; stty size; tty'"
    )
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"], capture_output=True, timeout=90, check=False, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.decode().replace("\r", "").splitlines()
    assert "22 77" in lines
    assert any(line.startswith("/dev/pts/") for line in lines)


def test_moorage_exec_it_returns_when_the_command_ends_and_restores_the_terminal(pod: Pod, sleeper: str) -> None:
    """In a real pseudo-terminal nobody types into: the command's end ends moorage exec -it, with its exit code,
    and the terminal is in the mode it was before (not raw)."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", pod.node.endpoint, "exec", "-it", sleeper,
            "sh", "-c", "echo hi; exit 3"]  # fmt: skip
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        output = bytearray()
        try:
            code = proc.wait(timeout=60)  # hung until a key was pressed before
        finally:
            proc.kill()
        while select.select([master], [], [], 0)[0]:
            output += os.read(master, 4096)
        assert code == 3, output
        assert b"hi" in output
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_moorage_attach_follows_the_output(pod: Pod) -> None:
    container_id = pod.run("talker-cli", "sh", "-c", "sleep 2; echo attached-output; sleep 0.5")
    done = cli(pod.node, "attach", container_id)
    assert (done.returncode, done.stdout) == (0, b"attached-output\n"), done.stderr


def test_moorage_port_forward_listens_locally(pod: Pod) -> None:
    pod.run("echo-cli", "busybox", "nc", "-ll", "-p", "8080", "-e", "busybox", "cat")
    argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", pod.node.endpoint, "port-forward", pod.id, "0:8080"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = int(line.split(":")[1].split()[0])
        answer = b""
        for _ in range(50):  # until nc listens in the pod
            with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(b"through the cli\n")
                conn.shutdown(socket.SHUT_WR)
                answer = b"".join(iter(lambda: conn.recv(4096), b""))
            if answer:
                break
            time.sleep(0.2)
        assert answer == b"through the cli\n"
    finally:
        proc.terminate()
        proc.wait(10)
