"""What ContainerStatus reports beyond state and exit: the stop signal, the Linux resources last applied, the
effective user. Each is checked through the running container too, and across a daemon restart."""

from __future__ import annotations

import time

import pytest

from moorage.cri import pb
from tests.fixtures import cgroups
from tests.fixtures import images as fixtures
from tests.fixtures.pods import Pod, log_lines
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture)
from tests.fixtures.registry import Registry
from tests.integration.daemon import PushedImage

pytestmark = pytest.mark.integration

# Exits with a code telling which signal stopped it.
TRAPS = "trap 'exit 11' USR1; trap 'exit 12' QUIT; trap 'exit 13' TERM; while true; do sleep 0.1; done"


@pytest.fixture(scope="module")
def quitting(registry: Registry) -> PushedImage:
    """busybox with STOPSIGNAL SIGQUIT."""
    img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["/bin/sh"], "StopSignal": "SIGQUIT"})
    digest = fixtures.push(registry, "test/quitting", "1", img)
    return PushedImage(f"{registry.host}/test/quitting:1", img, digest)


@pytest.fixture(scope="module")
def grouped(registry: Registry) -> PushedImage:
    """busybox whose /etc/group lists its user app (1000) in group-defined-in-image (50000), as critest's
    image for SupplementalGroupsPolicy does."""
    group = "root:x:0:\napp:x:1000:\ngroup-defined-in-image:x:50000:app\nnogroup:x:65534:\n"
    etc = fixtures.layer([fixtures.Entry.directory("etc"), fixtures.Entry.file("etc/group", group.encode())])
    img = fixtures.image([fixtures.busybox_layer(), etc], config={"Cmd": ["/bin/sh"], "User": "app"})
    digest = fixtures.push(registry, "test/grouped", "1", img)
    return PushedImage(f"{registry.host}/test/grouped:1", img, digest)


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
    assert "config.stop_signal: 99 is not a Signal" in str(err.value)


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


def test_the_runtime_reports_supplemental_groups_policy(pod: Pod) -> None:
    with pod.node.client() as client:
        assert client.runtime.Status(pb.StatusRequest(), timeout=30).features.supplemental_groups_policy


@pytest.mark.parametrize(
    ("policy", "groups"),
    [
        (pb.SupplementalGroupsPolicy.Merge, [1000, 1234, 50000]),  # the image's /etc/group is merged in
        (pb.SupplementalGroupsPolicy.Strict, [1000, 1234]),  # only the primary group and the requested ones
    ],
)
def test_supplemental_groups_policy_and_the_reported_user(
    pod: Pod, grouped: PushedImage, policy: pb.SupplementalGroupsPolicy.ValueType, groups: list[int]
) -> None:
    """critest's SupplementalGroupsPolicy specs: uid 1000 (RunAsUser), gid 1000 from /etc/passwd, and the groups
    the policy gives, the same for the first process, an exec'd one and ContainerStatus.user."""
    with pod.node.client() as client:
        client.pull_image(grouped.name)
    security = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1000), supplemental_groups=[1234], supplemental_groups_policy=policy
    )
    container_id = pod.run(
        "groups", "sh", "-c", "id -G; sleep 1000", image=grouped.name,
        linux=pb.LinuxContainerConfig(security_context=security),
    )  # fmt: skip
    expected = pb.ContainerUser(linux=pb.LinuxContainerUser(uid=1000, gid=1000, supplemental_groups=groups))
    user = pod.status(container_id).user
    user.linux.supplemental_groups.sort()
    assert user == expected
    line = " ".join(map(str, groups))
    deadline = time.monotonic() + 10
    while ("stdout", "F", line) not in (lines := log_lines(pod.status(container_id).log_path)):
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    with pod.node.client() as client:
        request = pb.ExecSyncRequest(container_id=container_id, cmd=["id", "-G"], timeout=10)
        assert client.runtime.ExecSync(request, timeout=30).stdout.decode() == line + "\n"
    pod.node.stop()
    pod.node.start()
    user = pod.status(container_id).user
    user.linux.supplemental_groups.sort()
    assert user == expected
