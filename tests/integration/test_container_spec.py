"""What the OCI spec gives a real container, seen from inside it and from the host: devices, mount propagation,
the image's STOPSIGNAL, rlimits."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.pods import Pod, log_lines
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

AS_ROOT = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))
)  # the image's USER is 1000; mknod'ed nodes are root's, mode 0644
PRIVILEGED = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(privileged=True, run_as_user=pb.Int64Value(value=0))
)


@pytest.fixture
def pod(node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path) -> Iterator[Pod]:
    p = Pod(node, busybox.name, cgroup_parent, tmp_path)
    yield p
    with node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)


@pytest.fixture(params=["runc", "crun"])
def any_pod(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pod]:
    """A privileged pod on each runtime handler: crun runs through moorage's wrapper on this hybrid-cgroup host,
    whose mount namespace must keep the host's propagation."""
    p = Pod(node, busybox.name, cgroup_parent, tmp_path, handler=str(request.param), privileged=True)
    yield p
    with node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)


def output(pod: Pod, container_id: str) -> list[str]:
    st = pod.wait_exit(container_id)
    assert st.exit_code == 0, log_lines(st.log_path)
    return [text for stream, _, text in log_lines(st.log_path) if stream == "stdout"]


def test_a_device_is_mapped_with_its_permissions(pod: Pod, tmp_path: Path) -> None:
    script = "stat -c '%t:%T %F' /dev/nulldev; echo data > /dev/nulldev && echo wrote; cat /dev/nulldev; echo read"
    device = pb.Device(container_path="/dev/nulldev", host_path="/dev/null", permissions="rw")
    lines = output(pod, pod.run("dev", "sh", "-c", script, devices=[device]))
    assert lines == ["1:3 character special file", "wrote", "read"]

    # A node with an unused major: the devices cgroup decides before any driver is looked for, so a write
    # it allows fails with ENXIO (no driver) and one it refuses with EPERM.
    ghost = tmp_path / "ghost"
    subprocess.run(["mknod", str(ghost), "c", str(unused_char_major()), "0"], check=True)
    for permissions, error in (("rw", "No such device or address"), ("r", "Operation not permitted")):
        mapped = pb.Device(container_path="/dev/ghost", host_path=str(ghost), permissions=permissions)
        name = f"ghost-{permissions}"
        st = pod.wait_exit(pod.run(name, "sh", "-c", "echo x > /dev/ghost", devices=[mapped], linux=AS_ROOT))
        assert st.exit_code != 0
        assert any(error in text for _, _, text in log_lines(st.log_path)), log_lines(st.log_path)


def unused_char_major() -> int:
    """A character major no driver has: 120-127 are reserved for local use and never assigned by the kernel
    (majors it hands out dynamically, 234-254, may belong to a watchdog or the like)."""
    text = Path("/proc/devices").read_text()
    chars = text.split("Block devices:")[0]
    taken = {int(line.split()[0]) for line in chars.splitlines() if line.strip()[:1].isdigit()}
    return next(major for major in range(120, 128) if major not in taken)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory that is a shared mount point of its own, as the kubelet's pod volume dirs are."""
    directory = tmp_path / "shared"
    directory.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    subprocess.run(["mount", "--make-shared", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", str(directory)], check=False)


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_bidirectional_propagation_shows_a_container_mount_on_the_host(any_pod: Pod, shared_dir: Path) -> None:
    pod = any_pod
    (shared_dir / "from-container").mkdir()
    volume = pb.Mount(
        container_path="/volume", host_path=str(shared_dir), propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL
    )
    script = (
        "mount -t tmpfs -o size=1m made-inside /volume/from-container && touch /volume/from-container/hi && sleep 60"
    )
    container_id = pod.run("mounter", "sh", "-c", script, mounts=[volume], linux=PRIVILEGED)
    deadline = time.monotonic() + 10
    while not (shared_dir / "from-container" / "hi").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _mounted(shared_dir / "from-container"), log_lines(pod.status(container_id).log_path)
    assert (shared_dir / "from-container" / "hi").exists()
    with pod.node.client() as client:
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=30)
        client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
    subprocess.run(["umount", str(shared_dir / "from-container")], check=True)


def test_host_to_container_propagation_shows_a_later_host_mount(any_pod: Pod, shared_dir: Path) -> None:
    pod = any_pod
    (shared_dir / "from-host").mkdir()
    slave = pb.Mount(
        container_path="/volume",
        host_path=str(shared_dir),
        propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
    )
    private = pb.Mount(container_path="/private", host_path=str(shared_dir))
    script = "while [ ! -e /volume/from-host/marker ]; do sleep 0.1; done; echo seen; ls /private/from-host | wc -l"
    container_id = pod.run("watcher", "sh", "-c", script, mounts=[slave, private])
    time.sleep(0.5)  # the container is running with both mounts before the host mounts anything
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "late", str(shared_dir / "from-host")], check=True)
    (shared_dir / "from-host" / "marker").touch()
    # rslave: the later host mount reached /volume; rprivate: /private still shows the empty directory beneath.
    assert output(pod, container_id) == ["seen", "0"]


@pytest.fixture(scope="module")
def usr1_image(registry: Registry) -> str:
    img = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["/bin/sh"], "StopSignal": "SIGUSR1"})
    fixtures.push(registry, "test/usr1", "1", img)
    return f"{registry.host}/test/usr1:1"


def test_stop_sends_the_images_stopsignal(pod: Pod, usr1_image: str) -> None:
    with pod.node.client() as client:
        client.pull_image(usr1_image)
    script = "trap 'echo got USR1; exit 0' USR1; trap '' TERM; while true; do sleep 0.1; done"
    container_id = pod.create("usr1", "sh", "-c", script, image=usr1_image)
    with pod.node.client() as client:
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
        time.sleep(0.3)
        began = time.monotonic()
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=20), timeout=60)
        stopped_in = time.monotonic() - began
    st = pod.status(container_id)
    assert st.exit_code == 0  # USR1 ended it: TERM is ignored and KILL would have given 137
    assert stopped_in < 20
    assert ("stdout", "F", "got USR1") in log_lines(st.log_path)


def test_rlimits_stay_within_the_daemons_own(pod: Pod, node: DaemonProcess) -> None:
    """The spec asks for a NOFILE limit and keeps every rlimit within what the daemon holds (root here cannot raise
    its hard limits); the container sees exactly that."""
    assert node.proc is not None
    daemon_limits = Path(f"/proc/{node.proc.pid}/limits").read_text()
    nofile_hard = next(line.split()[4] for line in daemon_limits.splitlines() if line.startswith("Max open files"))
    lines = output(pod, pod.run("limits", "sh", "-c", "ulimit -Hn; ulimit -Sn"))
    assert lines[0] == nofile_hard
    assert int(lines[1]) <= int(nofile_hard)
