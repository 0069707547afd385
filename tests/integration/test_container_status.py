"""What ContainerStatus reports beyond state and exit: the stop signal, the Linux resources last applied, the
effective user. Each is checked through the running container too, and across a daemon restart."""

from __future__ import annotations

import pytest

from moorage.api.cri import pb
from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.registry import Registry
from tests.integration.daemon import PushedImage
from tests.integration.test_containers import Pod
from tests.integration.test_containers import pod as pod  # noqa: PLC0414 (the fixture)

pytestmark = pytest.mark.integration

# Exits with a code telling which signal stopped it.
TRAPS = "trap 'exit 11' USR1; trap 'exit 12' QUIT; trap 'exit 13' TERM; while true; do sleep 0.1; done"


@pytest.fixture(scope="module")
def quitting(registry: Registry) -> PushedImage:
    """busybox with STOPSIGNAL SIGQUIT."""
    img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["/bin/sh"], "StopSignal": "SIGQUIT"})
    digest = fixtures.push(registry, "test/quitting", "1", img)
    return PushedImage(f"{registry.host}/test/quitting:1", img, digest)


def stop(pod: Pod, container_id: str) -> int:
    with pod.node.client() as client:
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=10), timeout=30)
    return pod.status(container_id).exit_code


def test_the_requested_stop_signal_wins_over_the_images(pod: Pod, quitting: PushedImage) -> None:
    with pod.node.client() as client:
        client.pull_image(quitting.name)
    requested = pod.run("requested", "sh", "-c", TRAPS, image=quitting.name, stop_signal=pb.Signal.SIGNAL_SIGUSR1)
    from_image = pod.run("image", "sh", "-c", TRAPS, image=quitting.name)
    default = pod.run("default", "sh", "-c", TRAPS)
    assert pod.status(requested).stop_signal == pb.Signal.SIGNAL_SIGUSR1
    assert pod.status(from_image).stop_signal == pb.Signal.SIGNAL_SIGQUIT
    assert pod.status(default).stop_signal == pb.Signal.SIGNAL_SIGTERM
    assert (stop(pod, requested), stop(pod, from_image), stop(pod, default)) == (11, 12, 13)
    assert pod.status(requested).stop_signal == pb.Signal.SIGNAL_SIGUSR1  # still reported once exited


def test_the_stop_signal_survives_a_daemon_restart(pod: Pod) -> None:
    container_id = pod.run("kept", "sh", "-c", TRAPS, stop_signal=pb.Signal.SIGNAL_SIGQUIT)
    pod.node.stop()
    pod.node.start()
    assert pod.status(container_id).stop_signal == pb.Signal.SIGNAL_SIGQUIT
    assert stop(pod, container_id) == 12


def test_an_unknown_stop_signal_is_refused(pod: Pod) -> None:
    with pytest.raises(Exception) as err:  # noqa: PT011 (a grpc.RpcError)
        pod.create("odd", "true", stop_signal=99)
    assert "config.stop_signal: unknown signal 99" in str(err.value)


def test_resources_report_what_was_applied_and_updated(pod: Pod, cgroup_parent: str) -> None:
    requested = pb.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=64 << 20,
        cpuset_cpus="0", cpuset_mems="0", oom_score_adj=500,
    )  # fmt: skip
    container_id = pod.run("limited", "sleep", "1000", linux=pb.LinuxContainerConfig(resources=requested))
    assert pod.status(container_id).resources.linux == requested
    update = pb.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_quota=30000)
    with pod.node.client() as client:
        request = pb.UpdateContainerResourcesRequest(container_id=container_id, linux=update)
        client.runtime.UpdateContainerResources(request, timeout=30)
    expected = pb.LinuxContainerResources()
    expected.CopyFrom(requested)
    expected.memory_limit_in_bytes, expected.cpu_quota = 96 << 20, 30000  # the rest is as it was
    assert pod.status(container_id).resources.linux == expected
    memory = cgroups.directory("memory", cgroups.container_cgroup(cgroup_parent, container_id))
    limit_file = "memory.max" if cgroups.is_v2() else "memory.limit_in_bytes"
    assert int(cgroups.read(memory / limit_file)) == 96 << 20
    pod.node.stop()
    pod.node.start()
    assert pod.status(container_id).resources.linux == expected


def test_resources_of_a_container_without_limits_are_empty_but_there(pod: Pod) -> None:
    status = pod.status(pod.run("free", "sleep", "1000"))
    assert status.HasField("resources")
    assert status.resources.linux == pb.LinuxContainerResources()
