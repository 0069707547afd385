from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """A running daemon on its own temp root and socket; stopped and removed after the test."""
    d = DaemonProcess()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def unstarted() -> Iterator[DaemonProcess]:
    """A daemon's temp paths and config, not started: the test writes its config and starts it."""
    d = DaemonProcess()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """A real docker-registry without auth on 127.0.0.1, shared by a test module."""
    with Registry() as reg:
        yield reg


@pytest.fixture
def node(registry: Registry) -> Iterator[DaemonProcess]:
    """A running daemon that trusts the module's registry (plain HTTP allowed to it)."""
    with running_node(registry.host) as d:
        yield d


@pytest.fixture(scope="module")
def busybox(registry: Registry) -> PushedImage:
    """The busybox test image, pushed once per module as ``<registry>/test/busybox:1``."""
    img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["/bin/sh"], "User": "1000"})
    digest = fixtures.push(registry, "test/busybox", "1", img)
    return PushedImage(f"{registry.host}/test/busybox:1", img, digest)


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A cgroup parent of the test's own (the kubelet's pod cgroup), removed from every hierarchy after."""
    name = f"/moorage-test-{secrets.token_hex(4)}"
    yield name
    deadline = time.monotonic() + 10
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        doomed = hierarchy / name.lstrip("/")
        for sub in sorted((p for p in doomed.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir_when_empty(sub, deadline)
        if doomed.is_dir():
            _rmdir_when_empty(doomed, deadline)


def _rmdir_when_empty(path: Path, deadline: float) -> None:
    """rmdir a cgroup, waiting while its last processes exit (EBUSY)."""
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
