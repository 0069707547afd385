"""sd_notify: datagrams reach a real unix socket, by path or abstract name; no $NOTIFY_SOCKET, nothing sent."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.node import sdnotify
from moorage.node.sdnotify import Notifier


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        yield sock


def test_addresses() -> None:
    assert sdnotify.address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.address("@sd-notify-1") == b"\0sd-notify-1"
    for unusable in ("", "@", "relative/path", "vsock:2:1234"):
        assert sdnotify.address(unusable) is None


def test_ready_to_a_path_socket(listener: socket.socket, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    listener.bind(str(path))
    assert Notifier(str(path)).send("READY=1", "MAINPID=42")
    assert listener.recv(4096) == b"READY=1\nMAINPID=42"


def test_stopping_to_an_abstract_socket(listener: socket.socket) -> None:
    name = f"moorage-test-notify-{secrets.token_hex(4)}"
    listener.bind(b"\0" + name.encode())
    assert Notifier("@" + name).send("STOPPING=1")
    assert listener.recv(4096) == b"STOPPING=1"


def test_no_manager_sends_nothing_and_a_dead_one_is_not_fatal(tmp_path: Path) -> None:
    assert not Notifier("").send("READY=1")
    assert not Notifier("relative").send("READY=1")
    assert not Notifier(str(tmp_path / "nobody-listens")).send("READY=1")


def test_the_variable_is_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket, tmp_path: Path
) -> None:
    """Children (runc, conmon) must not inherit it: runc would wait for the container to notify."""
    path = tmp_path / "notify"
    listener.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier.from_environment()
    assert "NOTIFY_SOCKET" not in os.environ
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    assert "NOTIFY_SOCKET" not in child
    assert notifier.send("READY=1")
    assert listener.recv(4096) == b"READY=1"
