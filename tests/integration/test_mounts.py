"""Mounts as real containers see them: /sys in privileged pods, recursive read-only binds, mount options and
mount propagation, on runc and crun, checked through /proc/self/mountinfo inside and the mount table outside."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.api.cri import pb
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node
from tests.integration.test_containers import Pod, log_lines
from tests.integration.test_pods import pod_config

pytestmark = pytest.mark.integration

ROOT = pb.Int64Value(value=0)
PRIVILEGED = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(privileged=True, run_as_user=ROOT)
)
UNPRIVILEGED_ROOT = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(run_as_user=ROOT))


class ConfiguredPod(Pod):
    """A test pod from a PodSandboxConfig of the test's own (privileged, sharing one PID namespace...)."""

    def __init__(
        self, node: DaemonProcess, image: str, config: pb.PodSandboxConfig, tmp: Path, handler: str = ""
    ) -> None:
        self.node, self.image, self.config = node, image, config
        self.config.log_directory = str(tmp / "logs")
        with node.client() as client:
            client.pull_image(image)
            request = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
            self.id = client.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id

    def remove(self) -> None:
        with self.node.client() as client:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=60)

    def output(self, container_id: str) -> list[str]:
        st = self.wait_exit(container_id, 30)
        lines = log_lines(st.log_path)
        assert st.exit_code == 0, lines
        return [text for stream, _, text in lines if stream == "stdout"]


def mountinfo_line(lines: list[str], point: str) -> tuple[str, str]:
    """(mount options, superblock options) of the mountinfo line of ``point`` among ``lines``."""
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[4] == point:
            return fields[5], fields[-1]
    raise AssertionError(f"{point} not in {lines}")


def privileged_pod_config(name: str, cgroup_parent: str, *, share_pid: bool) -> pb.PodSandboxConfig:
    config = pod_config(name, cgroup_parent=cgroup_parent)
    config.linux.security_context.privileged = True
    if share_pid:
        config.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    return config


@pytest.fixture
def pause_node(registry: Registry) -> Iterator[DaemonProcess]:
    """A daemon with moorage's own pause image, so pods may share one PID namespace."""
    with running_node(registry.host, 'sandbox_image = "localhost/moorage/pause:1.0"\n') as d:
        yield d


# --- /sys in privileged pods ------------------------------------------------------------------------------------


@pytest.mark.parametrize("share_pid", [False, True], ids=["infra-less", "pause"])
def test_a_privileged_pods_privileged_container_sees_sys_read_write(
    pause_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, share_pid: bool
) -> None:
    """sysfs has one superblock per net namespace, and its first mount decides whether that superblock is
    read-only for every later mount. A pause container (pause) or an unprivileged container started first
    (infra-less) must not make /sys read-only for the pod's privileged containers."""
    config = privileged_pod_config("sysrw", cgroup_parent, share_pid=share_pid)
    pod = ConfiguredPod(pause_node, busybox.name, config, tmp_path)
    try:
        bystander = pod.run("bystander", "sleep", "1000", linux=UNPRIVILEGED_ROOT)
        time.sleep(0.3)
        # Writing the pod's own loopback MTU back to itself changes nothing, and only inside the pod.
        script = "cat /proc/self/mountinfo; cat /sys/class/net/lo/mtu > /sys/class/net/lo/mtu && echo wrote || echo no"
        lines = pod.output(pod.run("admin", "sh", "-c", script, linux=PRIVILEGED))
        assert mountinfo_line(lines, "/sys") == ("rw,nosuid,nodev,noexec,relatime", "rw")
        assert lines[-1] == "wrote"
        with pod.node.client() as client:  # the unprivileged container's /sys stays read-only
            request = pb.ExecSyncRequest(container_id=bystander, cmd=["cat", "/proc/self/mountinfo"], timeout=10)
            seen = client.runtime.ExecSync(request, timeout=30).stdout.decode().splitlines()
        assert mountinfo_line(seen, "/sys")[0].startswith("ro,")
    finally:
        pod.remove()
    assert pause_node.mounts() == []
