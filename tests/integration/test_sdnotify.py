"""A real daemon under a notify socket, as systemd runs a Type=notify unit: READY=1 comes once the CRI socket
answers, STOPPING=1 when SIGTERM arrives; without the variable the daemon serves as always."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time

import pytest

from tests.integration.daemon import START_TIMEOUT, DaemonProcess

pytestmark = pytest.mark.integration


def _start_notified(daemon: DaemonProcess, notify_socket: str) -> subprocess.Popen[bytes]:
    """Start the daemon as systemd would: $NOTIFY_SOCKET set, nobody polling its socket."""
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(
            daemon.serve_argv(),
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "NOTIFY_SOCKET": notify_socket},
        )
    return daemon.proc


def _receive(sock: socket.socket, daemon: DaemonProcess, timeout: float) -> dict[str, str]:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        raise AssertionError(f"no notification within {timeout} s:\n{daemon.log()}") from None
    return dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_ready_once_the_socket_answers_and_stopping_on_sigterm(unstarted: DaemonProcess, kind: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if kind == "abstract":
            name = f"moorage-test-notify-{secrets.token_hex(4)}"
            sock.bind(b"\0" + name.encode())
            value = "@" + name
        else:
            value = str(unstarted.dir / "notify")
            sock.bind(value)
        proc = _start_notified(unstarted, value)
        ready = _receive(sock, unstarted, START_TIMEOUT)
        # Readiness means the kubelet can connect now: no retry, no wait.
        with unstarted.client(timeout=2) as client:
            assert client.version().runtime_name == "moorage"
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"serving on {unstarted.socket}"
        unstarted.send(signal.SIGTERM)
        assert _receive(sock, unstarted, 15) == {"STOPPING": "1"}
        assert proc.wait(15) == 0


def test_notify_socket_is_not_inherited_by_the_daemons_children(unstarted: DaemonProcess) -> None:
    """The OCI runtime and conmon see no NOTIFY_SOCKET: checked on the one child every start runs, the handlers'
    runtime features probe (on the first Status), through a runc that records its environment."""
    record = unstarted.dir / "runc-env"
    wrapper = unstarted.dir / "runc"
    wrapper.write_text(f'#!/bin/sh\nenv >> {record}\nexec runc "$@"\n')
    wrapper.chmod(0o755)
    unstarted.write_config(f'[runtime.handlers.runc]\npath = "{wrapper}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        value = str(unstarted.dir / "notify")
        sock.bind(value)
        _start_notified(unstarted, value)
        _receive(sock, unstarted, START_TIMEOUT)
    with unstarted.client() as client:
        client.status()  # asks each handler's runtime for its features
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert record.exists(), "the daemon never ran its runc"
    assert "NOTIFY_SOCKET" not in record.read_text()
