"""CRI stats on a real daemon: a busy container's cpu, memory and writable layer, listed and per pod."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import Pod, container_stats, wait_for_output
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = pytest.mark.integration

KIB = 1024
BUSY = (
    "head -c 102400 /dev/zero > /big; "
    'x=aaaa; i=0; while [ $i -lt 18 ]; do x="$x$x"; i=$((i+1)); done; '  # ≈1 MiB kept in the shell's memory
    "echo ready; while true; do :; done"
)
AS_ROOT = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))
)  # the image's USER 1000 may not write to /


def start(pod: Pod, name: str, script: str) -> str:
    container_id = pod.create(name, "sh", "-c", script, linux=AS_ROOT)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
    return container_id


def test_stats_of_a_busy_container_and_its_pod(pod: Pod) -> None:
    busy = start(pod, "busy", BUSY)
    idle = start(pod, "idle", "sleep 1000")
    wait_for_output(pod, busy, "ready")

    first = container_stats(pod, busy)
    time.sleep(0.3)
    second = container_stats(pod, busy)
    assert first.attributes.id == busy
    assert first.attributes.metadata.name == "busy"
    assert first.attributes.labels["name"] == "busy"
    assert 0 < first.cpu.usage_core_nano_seconds.value < second.cpu.usage_core_nano_seconds.value
    assert not first.cpu.HasField("usage_nano_cores")  # a rate needs two samples
    assert second.cpu.usage_nano_cores.value > 100_000_000  # a busy loop: well above a tenth of a core
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.memory.working_set_bytes.value > 512 * KIB
    assert second.memory.usage_bytes.value >= second.memory.working_set_bytes.value
    assert not second.memory.HasField("available_bytes")  # no memory limit
    assert second.writable_layer.used_bytes.value >= 100 * KIB  # /big
    assert second.writable_layer.inodes_used.value >= 2
    assert second.writable_layer.fs_id.mountpoint

    with pod.node.client() as client:
        listed = client.runtime.ListContainerStats(
            pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod.id))
        ).stats
        assert {s.attributes.id for s in listed} == {busy, idle}
        by_label = client.runtime.ListContainerStats(
            pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(label_selector={"name": "idle"}))
        ).stats
        assert [s.attributes.id for s in by_label] == [idle]
        by_id = client.runtime.ListContainerStats(
            pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(id=busy[:12]))
        ).stats
        assert [s.attributes.id for s in by_id] == [busy]
        assert {s.attributes.id for s in client.runtime.ListContainerStats(pb.ListContainerStatsRequest()).stats} >= {
            busy,
            idle,
        }

        pod_stats = client.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod.id)).stats
        assert pod_stats.attributes.id == pod.id
        assert pod_stats.attributes.labels["app"] == "web"
        assert {c.attributes.id for c in pod_stats.linux.containers} == {busy, idle}
        # the pod's cgroup (its cgroup_parent) holds both containers
        assert pod_stats.linux.cpu.usage_core_nano_seconds.value >= second.cpu.usage_core_nano_seconds.value
        assert pod_stats.linux.memory.working_set_bytes.value > 512 * KIB
        assert pod_stats.linux.process.process_count.value >= 2
        assert not pod_stats.linux.HasField("network")

        listed_pods = client.runtime.ListPodSandboxStats(
            pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector={"app": "web"}))
        ).stats
        assert [s.attributes.id for s in listed_pods] == [pod.id]
        none = client.runtime.ListPodSandboxStats(
            pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector={"app": "other"}))
        ).stats
        assert list(none) == []

        # The Stream forms send the same items in batches.
        request = pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod.id))
        streamed = [s for batch in client.runtime.StreamContainerStats(request) for s in batch.container_stats]
        assert {s.attributes.id for s in streamed} == {busy, idle}
        pods_request = pb.StreamPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector={"app": "web"}))
        streamed_pods = [
            s for batch in client.runtime.StreamPodSandboxStats(pods_request) for s in batch.pod_sandbox_stats
        ]
        assert [s.attributes.id for s in streamed_pods] == [pod.id]
        metrics = [
            m
            for batch in client.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest())
            for m in batch.pod_sandbox_metrics
        ]
        [ours] = [m for m in metrics if m.pod_sandbox_id == pod.id]
        assert {c.container_id for c in ours.container_metrics} == {busy, idle}
        assert list(ours.metrics) == []  # a loopback-only pod network: no interface to count


def test_stats_of_what_does_not_exist_are_not_found(pod: Pod) -> None:
    with pod.node.client() as client:
        err = rpc_error(lambda: client.runtime.ContainerStats(pb.ContainerStatsRequest(container_id="c0ffee")))
        assert err.code == grpc.StatusCode.NOT_FOUND
        err = rpc_error(lambda: client.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id="c0ffee")))
        assert err.code == grpc.StatusCode.NOT_FOUND


def test_an_exited_container_still_reports_its_writable_layer(pod: Pod) -> None:
    done = start(pod, "done", "head -c 4096 /dev/zero > /small")
    pod.wait_exit(done)
    stats = container_stats(pod, done)
    assert stats.attributes.id == done
    assert stats.writable_layer.used_bytes.value >= 4 * KIB


@pytest.fixture
def walking_node(registry: Registry) -> Iterator[DaemonProcess]:
    """A daemon that walks the writable layers every second."""
    with running_node(registry.host, "[runtime]\ndisk_usage_period = 1\n") as node:
        yield node


def test_writable_layer_usage_comes_from_the_background_walk(
    walking_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    walked = Pod(walking_node, busybox.name, cgroup_parent, tmp_path)
    try:
        container_id = walked.run("writer", "sleep", "1000")
        first = container_stats(walked, container_id).writable_layer
        with walking_node.client() as c:
            write = ["busybox", "dd", "if=/dev/zero", "of=/tmp/written-later", "bs=1048576", "count=2"]
            assert c.runtime.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=write)).exit_code == 0
        deadline, later = time.monotonic() + 30, first
        while later.used_bytes.value < first.used_bytes.value + (2 << 20) and time.monotonic() < deadline:
            time.sleep(0.2)
            later = container_stats(walked, container_id).writable_layer
        assert later.used_bytes.value >= first.used_bytes.value + (2 << 20)  # the next walk saw it
        assert later.timestamp > first.timestamp  # the time of the walk, not of the call
        assert later.inodes_used.value > first.inodes_used.value  # the file (and /tmp, copied up)
    finally:
        with walking_node.client() as c:
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=walked.id), timeout=60)
