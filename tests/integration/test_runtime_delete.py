"""A container's OCI runtime state goes when it exits (containerd's rule), not when it is removed, and
RemoveContainer still deletes whatever the runtime kept (:mod:`moorage.runtime.containers.deletes`)."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.cri import pb
from tests.fixtures.pods import Pod
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = pytest.mark.integration

REFUSING_RUNTIME = """#!/bin/sh
# runc, except that it refuses an unforced delete while {flag} exists (as if the delete after the exit failed)
if [ -e "{flag}" ]; then
  case " $* " in *" delete "*) case " $* " in *" --force "*) ;; *) echo "refused" >&2; exit 1 ;; esac ;; esac
fi
exec {runc} "$@"
"""


def runtime_has(node: DaemonProcess, handler: str, container_id: str) -> bool:
    return (node.state / "runtime" / handler / container_id).exists()


def wait_until_gone(node: DaemonProcess, handler: str, container_id: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while runtime_has(node, handler, container_id):
        assert time.monotonic() < deadline, f"the runtime still has {container_id}:\n{node.log()[-3000:]}"
        time.sleep(0.05)


def remove(node: DaemonProcess, container_id: str) -> None:
    with node.client() as client:
        client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
        assert container_id not in [c.id for c in client.runtime.ListContainers(pb.ListContainersRequest()).containers]


def test_the_runtime_forgets_a_container_when_it_exits_or_is_stopped(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path)
    try:
        done = pod.run("done", "sh", "-c", "exit 3")
        assert (pod.wait_exit(done).exit_code, pod.status(done).reason) == (3, "Error")
        wait_until_gone(node, "runc", done)  # deleted in the background once the exit is recorded
        assert pod.status(done).state == pb.ContainerState.CONTAINER_EXITED  # the record stays until removed
        stopped = pod.run("stopped", "sleep", "1000")
        assert runtime_has(node, "runc", stopped)
        with node.client() as client:
            client.runtime.StopContainer(pb.StopContainerRequest(container_id=stopped, timeout=0), timeout=30)
        assert not runtime_has(node, "runc", stopped)  # gone when StopContainer returns
        assert pod.status(stopped).exit_code == 137
        remove(node, done)
        remove(node, stopped)
        assert not (node.state / "bundles" / stopped).exists()
    finally:
        node.remove_all_pods()


def test_an_exit_recorded_at_start_up_is_deleted_too(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path)
    try:
        container_id = pod.run("short", "sleep", "1")
        assert node.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(1.5)  # it exits while the daemon is away; conmon records the code
        node.start()
        assert pod.wait_exit(container_id).exit_code == 0
        wait_until_gone(node, "runc", container_id)
        remove(node, container_id)
    finally:
        node.remove_all_pods()


@pytest.fixture
def refusing_node(registry: Registry, tmp_path: Path) -> Iterator[DaemonProcess]:
    runc = shutil.which("runc")
    assert runc is not None
    wrapper = tmp_path / "refusing-runc"
    (tmp_path / "refuse").touch()
    wrapper.write_text(REFUSING_RUNTIME.format(runc=runc, flag=tmp_path / "refuse"))
    wrapper.chmod(0o755)
    handlers = f'[runtime.handlers.runc]\npath = "runc"\n[runtime.handlers.refusing]\npath = "{wrapper}"\n'
    with running_node(registry.host, handlers) as node:
        try:
            yield node
        finally:
            node.remove_all_pods()


def kept_after_its_exit(node: DaemonProcess, pod: Pod) -> str:
    """A container that exited, whose delete after the exit the runtime refused."""
    container_id = pod.run("kept", "true")
    assert pod.wait_exit(container_id).exit_code == 0
    deadline = time.monotonic() + 10
    while "runtime delete after exit failed" not in node.log():
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.05)
    assert runtime_has(node, "refusing", container_id)
    return container_id


def test_remove_deletes_what_the_runtime_kept_after_the_exit(
    refusing_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    container_id = kept_after_its_exit(
        refusing_node, Pod(refusing_node, busybox.name, cgroup_parent, tmp_path, "refusing")
    )
    remove(refusing_node, container_id)
    assert not runtime_has(refusing_node, "refusing", container_id)  # RemoveContainer forced it


def test_the_next_start_deletes_what_the_runtime_kept_after_an_exit(
    refusing_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(refusing_node, busybox.name, cgroup_parent, tmp_path, "refusing")
    container_id = kept_after_its_exit(refusing_node, pod)
    (tmp_path / "refuse").unlink()  # the runtime deletes again
    refusing_node.stop()
    refusing_node.start()
    wait_until_gone(refusing_node, "refusing", container_id)  # recovery deleted it, in the background
    assert pod.status(container_id).state == pb.ContainerState.CONTAINER_EXITED
    remove(refusing_node, container_id)
