"""crictl (cri-tools v1.37) exec, attach and port-forward against the streaming server, over both of its
transports: SPDY/3.1 and WebSocket (``--transport``), as a user runs them, with a terminal from script(1)
where ``-t`` wants one."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.clientgo import clientgo as clientgo  # noqa: PLC0414 (the fixture)
from tests.fixtures.clientgo import run_echo_server
from tests.fixtures.crictl import CRICTL
from tests.fixtures.pods import Pod
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def config(pod: Pod, tmp_path: Path) -> Path:
    if not CRICTL.exists():
        pytest.fail(f"{CRICTL} is missing: `make cri-tools` builds it (make test does)")
    path = tmp_path / "crictl.yaml"
    path.write_text(f"runtime-endpoint: {pod.node.endpoint}\nimage-endpoint: {pod.node.endpoint}\ntimeout: 60\n")
    return path


def in_terminal(config: Path, *args: str, size: str = "cols 100 rows 30") -> subprocess.CompletedProcess[bytes]:
    """crictl ARGS in a terminal of script(1)'s, sized ``size``; what the terminal showed.

    script's own stdin is a terminal held open, not /dev/null: at EOF on its stdin script types the EOF
    character (^D) into its terminal at once; the line discipline, still canonical then, keeps it as a NUL
    end-of-file mark, which crictl reads as a data byte once it has made the terminal raw and sends as stdin;
    the container's terminal echoes it as ``^@`` before the command's output."""
    command = f"stty {size}; {shlex.join([str(CRICTL), '--config', str(config), *args])}"
    master, slave = os.openpty()
    try:
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"], capture_output=True, timeout=90, check=False, stdin=slave
        )
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_it_shows_the_commands_output_and_nothing_else(config: Path, pod: Pod, transport: str) -> None:
    container_id = pod.run("sleeper", "sleep", "1000")
    done = in_terminal(config, "exec", "--transport", transport, "-it", container_id, "sh", "-c", "stty size")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.replace(b"\r", b"") == b"30 100\n"


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_streams_stdin_and_exits_with_the_commands_code(config: Path, pod: Pod, transport: str) -> None:
    container_id = pod.run("sleeper", "sleep", "1000")
    argv = [str(CRICTL), "--config", str(config), "exec", "--transport", transport]
    done = subprocess.run([*argv, container_id, "sh", "-c", "echo out; echo err >&2; exit 3"],
                          capture_output=True, timeout=90, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (1, b"out\n"), done.stderr  # crictl exits 1, naming the code
    assert done.stderr.startswith(b"err\n")
    assert b"exit code 3" in done.stderr
    typed = subprocess.run([*argv, "-i", container_id, "sh", "-c", "cat; echo end"], input=b"typed\n",
                           capture_output=True, timeout=90, check=False)  # fmt: skip
    assert (typed.returncode, typed.stdout) == (0, b"typed\nend\n"), typed.stderr


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_attach_sends_stdin_and_shows_the_output(config: Path, pod: Pod, transport: str) -> None:
    container_id = pod.run("reader", "sh", "-c", "read line; echo got $line", stdin=True)
    argv = [str(CRICTL), "--config", str(config), "attach", "--transport", transport, "-i", container_id]
    done = subprocess.run(argv, input=b"hello\n", capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"got hello\n"


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_port_forward_carries_connections_to_the_pod(config: Path, pod: Pod, transport: str, clientgo: Path) -> None:
    run_echo_server(pod, clientgo)
    with socket.socket() as probe:  # a free local port for crictl
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [str(CRICTL), "--config", str(config), "port-forward", "--transport", transport, pod.id, f"{port}:8080"]
    forward = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert forward.stdout is not None
        assert b"Forwarding from 127.0.0.1:" in forward.stdout.readline()
        for i in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall(f"ping {i}\n".encode())
                assert conn.makefile("rb").readline() == f"ping {i}\n".encode()
    finally:
        forward.terminate()
        forward.wait(timeout=30)
