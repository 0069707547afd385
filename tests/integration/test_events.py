"""GetContainerEvents on a real daemon: the kubelet's evented PLEG sees pods and containers change."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures.pods import Pod
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

E = pb.ContainerEventType


def test_events_follow_a_pod_and_its_container(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    seen: list[pb.ContainerEventResponse] = []
    ended: list[grpc.StatusCode] = []
    with node.client() as client:
        stream = client.runtime.GetContainerEvents(pb.GetEventsRequest())

        def read() -> None:
            try:
                for event in stream:
                    seen.append(event)
            except grpc.RpcError as exc:
                ended.append(exc.code())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)  # subscribed before anything happens
        pod = Pod(node, busybox.name, cgroup_parent, tmp_path)
        container_id = pod.run("job", "sh", "-c", "exit 3")
        pod.wait_exit(container_id)
        client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)
        deadline = time.monotonic() + 10
        while len(seen) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        stream.cancel()
        reader.join(10)
    assert ended == [grpc.StatusCode.CANCELLED]  # the stream lasted until the client hung up

    assert [(e.container_id, E.Name(e.container_event_type)) for e in seen] == [
        (pod.id, "CONTAINER_CREATED_EVENT"),
        (pod.id, "CONTAINER_STARTED_EVENT"),
        (container_id, "CONTAINER_CREATED_EVENT"),
        (container_id, "CONTAINER_STARTED_EVENT"),
        (container_id, "CONTAINER_STOPPED_EVENT"),
        (container_id, "CONTAINER_DELETED_EVENT"),
        (pod.id, "CONTAINER_STOPPED_EVENT"),
        (pod.id, "CONTAINER_DELETED_EVENT"),
    ]
    stopped = seen[4]
    assert stopped.pod_sandbox_status.id == pod.id
    assert stopped.pod_sandbox_status.state == pb.PodSandboxState.SANDBOX_READY
    (status,) = stopped.containers_statuses
    assert (status.id, status.state, status.exit_code) == (container_id, pb.ContainerState.CONTAINER_EXITED, 3)
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(seen))
    assert seen[5].containers_statuses == []  # the deleted container is gone from its pod


def test_pod_status_carries_its_containers_statuses(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    """PodSandboxStatus with a timestamp also answers the pod's containers' statuses: the kubelet's Evented PLEG
    takes them as the whole pod (kuberuntime_manager GetPodStatus) and, with none there, started the pod's
    containers again on every sync (found by tests/kubelet)."""
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path)
    try:
        running = pod.run("long", "sleep", "3600")
        exited = pod.run("job", "sh", "-c", "exit 3")
        pod.wait_exit(exited)
        with node.client() as client:
            answer = client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id))
            assert answer.timestamp > 0
            statuses = {s.id: s for s in answer.containers_statuses}
            assert set(statuses) == {running, exited}
            assert statuses[running].state == pb.ContainerState.CONTAINER_RUNNING
            assert (statuses[exited].state, statuses[exited].exit_code) == (pb.ContainerState.CONTAINER_EXITED, 3)
            assert statuses[exited] == client.container_status(exited).status
            client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=exited), timeout=30)
            answer = client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id))
            assert [s.id for s in answer.containers_statuses] == [running]
    finally:
        with node.client(timeout=60) as client:
            client.remove_pod(pod.id)
