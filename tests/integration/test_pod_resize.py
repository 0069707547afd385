"""In-place pod resize on a real daemon: UpdatePodSandboxResources writes the pod cgroup's limits (v1 here, v2
and the systemd driver in `make test-cgroupv2*`), up and down with a container running, refuses a memory limit
below the pod's usage without changing anything, and keeps what it was told with the pod across a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import cgroups
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import Pod
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = [pytest.mark.integration, pytest.mark.cgroup]

MIB = 1 << 20
R = pb.LinuxContainerResources
HOLD_24_MIB = "head -c 25165824 /dev/zero > /dev/shm/fill"
"""tmpfs pages are charged to the cgroup that writes them: the pod's usage rises past 24 MiB and stays."""


@pytest.fixture(scope="module")
def resize_node(registry: Registry) -> Iterator[DaemonProcess]:
    with running_node(registry.host) as d:
        yield d


@pytest.fixture
def pod(resize_node: DaemonProcess, busybox: PushedImage, tmp_path: Path) -> Iterator[Pod]:
    with cgroups.pod_cgroup() as parent:
        p = Pod(resize_node, busybox.name, parent, tmp_path)
        try:
            yield p
        finally:
            with resize_node.client() as client:
                client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)


def resize(pod: Pod, total: pb.LinuxContainerResources, overhead: pb.LinuxContainerResources | None = None) -> None:
    request = pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=pod.id, resources=total, overhead=overhead)
    with pod.node.client() as client:
        client.runtime.UpdatePodSandboxResources(request, timeout=30)


def pod_limits(pod: Pod) -> tuple[str, str, str]:
    """memory limit, cpu quota, cpu period of the pod's own cgroup; no limit reads "max" on either version."""
    cgroup = cgroups.pod_dir(pod.config.linux.cgroup_parent)

    def at(controller: str, file: str) -> str:
        return cgroups.read(cgroups.directory(controller, cgroup) / file)

    if cgroups.is_v2():
        quota, period = at("cpu", "cpu.max").split()
        return at("memory", "memory.max"), quota, period
    memory = at("memory", "memory.limit_in_bytes")
    quota = at("cpu", "cpu.cfs_quota_us")
    unlimited = int(memory) >= 1 << 62
    return "max" if unlimited else memory, "max" if quota == "-1" else quota, at("cpu", "cpu.cfs_period_us")


def test_a_resize_up_and_down_reaches_the_pod_cgroup_with_a_container_running(pod: Pod) -> None:
    container_id = pod.run("app", "sleep", "1000")
    resize(pod, R(memory_limit_in_bytes=200 * MIB, cpu_quota=40_000, cpu_period=100_000, cpu_shares=410),
           R(memory_limit_in_bytes=8 * MIB, cpu_quota=10_000, cpu_shares=102))  # fmt: skip
    assert pod_limits(pod) == (str(208 * MIB), "50000", "100000")
    resize(pod, R(memory_limit_in_bytes=64 * MIB, cpu_quota=20_000, cpu_period=50_000, cpu_shares=204))
    assert pod_limits(pod) == (str(64 * MIB), "20000", "50000")
    resize(pod, R(cpu_shares=204))  # a container without limits: the pod has none
    assert pod_limits(pod) == ("max", "max", "100000")
    assert pod.status(container_id).state == pb.ContainerState.CONTAINER_RUNNING
    with pod.node.client() as client:
        verbose = client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True))
    kept = json.loads(verbose.info["info"])["resources"]
    assert kept["resources"] == {"cpu_shares": "204"}


def test_memory_below_the_pods_usage_is_refused_and_nothing_changes(pod: Pod) -> None:
    pod.run("hog", "sh", "-c", f"{HOLD_24_MIB}; sleep 1000")
    resize(pod, R(memory_limit_in_bytes=256 * MIB, cpu_quota=30_000, cpu_period=100_000))
    memory = cgroups.directory("memory", cgroups.pod_dir(pod.config.linux.cgroup_parent))
    usage_file = "memory.current" if cgroups.is_v2() else "memory.usage_in_bytes"
    for _ in range(100):  # the container fills its 24 MiB
        if int(cgroups.read(memory / usage_file)) > 24 * MIB:
            break
        time.sleep(0.1)
    err = rpc_error(lambda: resize(pod, R(memory_limit_in_bytes=16 * MIB, cpu_quota=10_000, cpu_period=100_000)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"memory limit {16 * MIB} is not above the pod's usage of" in err.details
    assert pod_limits(pod) == (str(256 * MIB), "30000", "100000")


def test_a_cgroup_parent_shared_with_another_pod_is_not_resized(pod: Pod) -> None:
    pod.run("app", "sleep", "1000")
    before = pod_limits(pod)
    config = pb.PodSandboxConfig()
    config.CopyFrom(pod.config)
    config.metadata.name, config.metadata.uid = "neighbour", "uid-neighbour"
    with pod.node.client() as client:
        neighbour = client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        try:
            err = rpc_error(lambda: resize(pod, R(memory_limit_in_bytes=64 * MIB, cpu_quota=20_000)))
        finally:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=neighbour), timeout=60)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is shared with pod sandbox {neighbour}" in err.details
    assert pod_limits(pod) == before


def test_bad_requests_are_refused_precisely(pod: Pod, resize_node: DaemonProcess) -> None:
    err = rpc_error(lambda: resize(pod, R(memory_limit_in_bytes=-1)))
    assert (err.code, err.details) == (
        grpc.StatusCode.INVALID_ARGUMENT, "resources.memory_limit_in_bytes: -1 is negative"
    )  # fmt: skip
    with resize_node.client() as client:
        request = pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id="nope", resources=R(cpu_shares=2))
        missing = rpc_error(lambda: client.runtime.UpdatePodSandboxResources(request, timeout=30))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert "nope" in missing.details
