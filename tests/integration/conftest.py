from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node


def _leftovers() -> set[str]:
    """What tests could leave on the host: mounts under test dirs, processes in test cgroups or running from
    test dirs (daemons, conmons, containers), test cgroups."""
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if "/moorage-test-" in point or "/pytest-of-" in point:
            found.add(f"mount {point}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if "/tmp/moorage-test-" in cmdline or "/moorage-test-" in cgroups:
            found.add(f"process {proc.name}: {cmdline[:120]}")
    root = Path("/sys/fs/cgroup")
    for hierarchy in [root, *(p for p in root.iterdir() if p.is_dir())]:
        found.update(f"cgroup {p}" for p in hierarchy.glob("moorage-test-*"))
        found.update(f"cgroup {p}" for p in hierarchy.glob("moorage_test_*.slice"))  # pod slices (systemd driver)
        if (hierarchy / "moorage").is_dir():  # the runtime's default parent: a test pod without a cgroup_parent
            found.add(f"cgroup {hierarchy / 'moorage'}")
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole run: no mount, process or cgroup of the tests' own is left on the host.

    The check is host-wide: ``MOORAGE_TEST_SHARED_HOST=1`` turns it off for runs made while other test runs use
    the same host (their temp roots and cgroups would be counted as this run's). CI never sets it."""
    if os.environ.get("MOORAGE_TEST_SHARED_HOST") == "1":
        yield
        return
    before = _leftovers()
    yield
    deadline = time.monotonic() + 10
    while (left := _leftovers() - before) and time.monotonic() < deadline:
        time.sleep(0.2)  # processes killed by the last test's clean-up may still be exiting
    assert not left, "left behind by the tests:\n" + "\n".join(sorted(left))


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
    cgroups.remove(name)
