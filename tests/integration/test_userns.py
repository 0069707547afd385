"""Pods in user namespaces (hostUsers: false) on runc 1.1 and crun 1.8, with the idmapped mounts moorage makes:
the mapping inside, files and volumes as the container's root and the host see them, what the container's root
cannot do to the node, and exec, logs and stats as usual."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from moorage.node import idmap, namespaces
from tests.fixtures import cgroups
from tests.fixtures.cgroups import MIB, OWN_MEMORY_LIMIT
from tests.fixtures.checkpoints import archive_of
from tests.fixtures.clientgo import clientgo as clientgo  # noqa: PLC0414 (the fixture)
from tests.fixtures.clientgo import run, run_echo_server
from tests.fixtures.crictl import CRICTL
from tests.fixtures.errors import rpc_error
from tests.fixtures.held_runtime import Held
from tests.fixtures.held_runtime import held as held  # noqa: PLC0414 (the fixture)
from tests.fixtures.held_runtime import held_node as held_node  # noqa: PLC0414 (the fixture)
from tests.fixtures.pods import ConfiguredPod, log_lines, pod_config
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = [pytest.mark.integration, pytest.mark.cgroup]  # make test-cgroupv2 runs them in its guest too

HOST_ID = 200000
LENGTH = 65536
ROOT = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0)))
HANDLERS = ["runc", "crun"]


def userns_options(host_id: int = HOST_ID, length: int = LENGTH) -> pb.UserNamespace:
    mapping = [pb.IDMapping(container_id=0, host_id=host_id, length=length)]
    return pb.UserNamespace(mode=pb.NamespaceMode.POD, uids=mapping, gids=mapping)


def userns_pod_config(name: str, cgroup_parent: str) -> pb.PodSandboxConfig:
    config = pod_config(name, cgroup_parent=cgroup_parent)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns_options())
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    return config


@pytest.fixture(scope="session")
def unsupported(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """Why this node cannot run pods in user namespaces (None: it can), probed as the daemon probes its root."""
    return idmap.probe_node(tmp_path_factory.mktemp("probe") / "idmap-probe")


@pytest.fixture
def can(unsupported: str | None) -> None:
    """Skips (before any daemon starts) where the node cannot: the cgroup v2 guest's 6.1 kernel (tmpfs has
    idmapped mounts from Linux 6.3)."""
    if unsupported is not None:
        pytest.skip(f"this node cannot run pods in user namespaces: {unsupported}")


@pytest.fixture
def userns_node(can: None, node: DaemonProcess) -> DaemonProcess:
    return node


@pytest.fixture(params=HANDLERS)
def pod(request: pytest.FixtureRequest, userns_node: DaemonProcess, busybox: PushedImage, cgroup_parent: str,
        tmp_path: Path) -> Iterator[ConfiguredPod]:  # fmt: skip
    p = ConfiguredPod(userns_node, busybox.name, userns_pod_config("userns", cgroup_parent), tmp_path, request.param)
    yield p
    p.remove()
    assert not [m for m in userns_node.mounts() if "/bundles/" in m or "/containers/" in m or "/pods/" in m]


def test_status_reports_user_namespaces_where_the_node_can(
    node: DaemonProcess, cgroup_parent: str, unsupported: str | None
) -> None:
    """Every handler where the kernel can make the mounts; elsewhere none, the reason logged and a pod asking for
    one refused with it."""
    with node.client() as client:
        handlers = client.runtime.Status(pb.StatusRequest(), timeout=30).runtime_handlers
        features = {h.name: h.features.user_namespaces for h in handlers}
        assert features == dict.fromkeys(["", "runc", "crun"], unsupported is None)
        if unsupported is None:
            return
        failure = rpc_error(
            lambda: client.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=userns_pod_config("refused", cgroup_parent)), timeout=30
            )
        )
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot run pods in user namespaces" in failure.details
    reason = unsupported.split(" (")[0]  # the paths in it are the probe's own
    assert reason in failure.details
    assert reason in node.log()


def test_the_container_sees_the_pods_mapping_and_owns_its_root(pod: ConfiguredPod) -> None:
    script = (
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin /etc/hosts /etc/hostname"
        " /etc/resolv.conf /dev/shm; echo x > /etc/hosts && echo x > /dev/shm/f && touch /root-file && echo wrote;"
        " cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced; hostname"
    )
    cid = pod.run("maps", "sh", "-c", script, linux=ROOT)
    out = pod.output(cid)
    assert [line.split() for line in out[:2]] == [["0", str(HOST_ID), str(LENGTH)]] * 2
    assert out[2:] == ["0", *["0:0"] * 5, "wrote", "0", "1", "userns-host"]


def test_a_file_roots_writes_in_a_volume_is_the_mapped_uid_on_the_host(pod: ConfiguredPod, tmp_path: Path) -> None:
    """A plain volume: the container's root is host uid 200000 there. An idmapped one (the pod's mappings, as
    the kubelet sends them): host uid 0 is its root, both ways."""
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    for directory in (plain, mapped):
        directory.mkdir()
        directory.chmod(0o777)
    (mapped / "from-host").write_text("host\n")
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    mounts = [
        pb.Mount(container_path="/plain", host_path=str(plain)),
        pb.Mount(container_path="/mapped", host_path=str(mapped), uidMappings=maps, gidMappings=maps),
    ]
    script = "touch /plain/new /mapped/new && stat -c %u:%g /plain/new /mapped/new /mapped/from-host"
    cid = pod.run("volumes", "sh", "-c", script, linux=ROOT, mounts=mounts)
    assert pod.output(cid) == ["0:0", "0:0", "0:0"]
    assert (os.stat(plain / "new").st_uid, os.stat(plain / "new").st_gid) == (HOST_ID, HOST_ID)
    assert (os.stat(mapped / "new").st_uid, os.stat(mapped / "new").st_gid) == (0, 0)


def test_an_image_volume_is_owned_by_root_inside(pod: ConfiguredPod) -> None:
    """An image volume with the pod's mappings, as the kubelet sends every mount of such a pod: an overlay over
    idmapped layers (overlayfs cannot be idmapped itself), its files root's inside as the root filesystem's are."""
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    volume = pb.Mount(
        container_path="/vol", readonly=True, image=pb.ImageSpec(image=pod.image), uidMappings=maps, gidMappings=maps
    )
    script = "stat -c %u:%g /vol/bin /vol/bin/busybox; /vol/bin/busybox true && echo ran"
    cid = pod.run("image-volume", "sh", "-c", script, linux=ROOT, mounts=[volume])
    assert pod.output(cid) == ["0:0", "0:0", "ran"]


def test_root_cannot_read_a_host_roots_private_file_through_a_host_path(pod: ConfiguredPod, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host root only\n")
    secret.chmod(0o600)
    mounts = [pb.Mount(container_path="/secret", host_path=str(secret), readonly=True)]
    cid = pod.run("secret", "sh", "-c", "stat -c %u /secret; cat /secret || echo refused", linux=ROOT, mounts=mounts)
    assert pod.output(cid) == ["65534", "refused"]


def test_another_host_user_cannot_reach_the_pods_files(pod: ConfiguredPod, tmp_path: Path) -> None:
    """The bundle and the pod's directory are 0710, group the pod root's host gid: the runtime, as the pod's root,
    passes them; another unprivileged host user cannot read the spec (its env), the volume binds, the root
    filesystem or the pod's files."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "token").write_text("secret\n")
    mounts = [pb.Mount(container_path="/vol", host_path=str(volume), readonly=True)]
    cid = pod.run("private", "sh", "-c", "cat /vol/token; sleep 1000", linux=ROOT, mounts=mounts)
    bundle = pod.node.state / "bundles" / cid
    pod_dir = pod.node.state / "pods" / pod.id
    for directory in (bundle, pod_dir):
        st = directory.stat()
        assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o710", 0, HOST_ID), directory
    paths = [bundle / "config.json", bundle / "rootfs" / "etc" / "passwd", *(bundle / "mounts").glob("*/token")]
    assert len(paths) == 3
    for path in [*paths, *(p for p in pod_dir.rglob("*") if p.is_file())]:
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode != 0, path
        assert "Permission denied" in done.stderr, path
    deadline = time.monotonic() + 30
    while pod.status(cid).state != pb.ContainerState.CONTAINER_RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pod.exec(cid, "cat", "/vol/token") == "secret\n"


def test_a_read_only_volume_stays_read_only_for_root_with_every_capability(
    pod: ConfiguredPod, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The host-side bind of a read-only volume is read-only itself, so on runc the flag is locked in the pod's
    mount namespace: root with CAP_SYS_ADMIN (and no AppArmor here) cannot remount it read-write, plain or
    idmapped. crun 1.8 binds it afresh inside that namespace, where the flag is not locked: there such a container
    is refused, and nothing it made is left."""
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    mounts = []
    for name, mapped in (("plain", False), ("mapped", True)):
        directory = tmp_path / name
        directory.mkdir()
        directory.chmod(0o777)
        mounts.append(pb.Mount(container_path=f"/{name}", host_path=str(directory), readonly=True,
                               uidMappings=maps if mapped else [], gidMappings=maps if mapped else []))  # fmt: skip
    linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=0), capabilities=pb.Capability(add_capabilities=["ALL"])
        )
    )
    script = "; ".join(
        f"mount -o remount,bind,rw /{name} 2>/dev/null; touch /{name}/x 2>/dev/null && echo {name}-written"
        f" || echo {name}-refused"
        for name in ("plain", "mapped")
    )
    if request.node.callspec.params["pod"] == "crun":  # AppArmor's deny mount would not see mount_setattr(2)
        failure = rpc_error(lambda: pod.run("remount", "sh", "-c", script, linux=linux, mounts=mounts))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.details.startswith("config.mounts[0]: the read-only volume at /plain would not stay read-only")
        assert "'crun'" in failure.details
        assert not [m for m in pod.node.mounts() if "/bundles/" in m or "/containers/" in m]
        cid = pod.run("remount", "sh", "-c", script, linux=linux, mounts=[])  # no read-only volume: created
        assert pod.output(cid) == ["plain-refused", "mapped-refused"]  # (no such directories)
        return
    cid = pod.run("remount", "sh", "-c", script, linux=linux, mounts=mounts)
    assert pod.output(cid) == ["plain-refused", "mapped-refused"]
    assert not (tmp_path / "plain" / "x").exists()
    assert not (tmp_path / "mapped" / "x").exists()


def test_root_with_every_capability_cannot_touch_the_node(pod: ConfiguredPod, tmp_path: Path) -> None:
    """All capabilities, in the pod's user namespace: no kernel module, no filesystem the kernel keeps to the
    node's root (debugfs), no node sysctl."""
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=0), capabilities=pb.Capability(add_capabilities=["ALL"])
        )
    )
    script = (
        "printf '\\177ELF' > /tmp/m.ko; insmod /tmp/m.ko 2>&1 && echo loaded || echo no-module;"
        " mkdir -p /mnt/d; mount -t debugfs none /mnt/d 2>&1 && echo mounted || echo no-mount;"
        " echo 1 > /proc/sys/vm/swappiness && echo changed || echo no-sysctl"
    )
    cid = pod.run("escape", "sh", "-c", script, linux=linux)
    out = pod.output(cid)
    assert [line for line in out if line.startswith("no-")] == ["no-module", "no-mount", "no-sysctl"], out
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "/mnt/d " in line]


def test_exec_logs_and_stats_work(pod: ConfiguredPod) -> None:
    cid = pod.run("server", "sh", "-c", "echo started; exec sleep 1000", linux=ROOT)
    assert pod.exec(cid, "id", "-u") == "0\n"
    assert pod.exec(cid, "cat", "/proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    deadline = time.monotonic() + 10
    with pod.node.client() as client:
        while True:
            stats = client.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=10).stats
            if stats.memory.working_set_bytes.value > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stats.memory.working_set_bytes.value > 0
        log = Path(client.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.log_path)
        assert "stdout F started" in log.read_text()
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)


def test_attach_and_port_forward_work(pod: ConfiguredPod, clientgo: Path, tmp_path: Path) -> None:
    """Attach goes through conmon and port-forward into the pod's net namespace, both from the host's side."""
    run_echo_server(pod, clientgo)  # a server in the pod, reached through a port-forward
    with pod.node.client() as client:
        url = client.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[8080]), timeout=30).url
    many = run(clientgo, "portforward", "-transport", "spdy", "-port", "8080", "-connections", "10", url)
    assert (many.returncode, many.stdout) == (0, b"OK 10\n"), many.stderr
    config = tmp_path / "crictl.yaml"
    config.write_text(f"runtime-endpoint: {pod.node.endpoint}\nimage-endpoint: {pod.node.endpoint}\ntimeout: 60\n")
    cid = pod.run("reader", "sh", "-c", "read line; echo got $line as $(id -u)", stdin=True, linux=ROOT)
    argv = [str(CRICTL), "--config", str(config), "attach", "-i", cid]
    done = subprocess.run(argv, input=b"hello\n", capture_output=True, timeout=90, check=False)
    assert (done.returncode, done.stdout) == (0, b"got hello as 0\n"), done.stderr


def test_a_daemon_killed_and_started_again_keeps_the_pod_in_its_user_namespace(pod: ConfiguredPod) -> None:
    """The pinned user namespace survives the daemon: after a SIGKILL and a start, the pod is ready, its running
    container still in it, and a new container joins the same one (the fixture then removes everything)."""
    running = pod.run("before", "sleep", "1000", linux=ROOT)
    assert pod.node.stop(signal.SIGKILL) == -signal.SIGKILL
    pod.node.start()
    with pod.node.client() as client:
        status = client.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id)).status
    assert status.state == pb.PodSandboxState.SANDBOX_READY
    assert pod.exec(running, "cat", "/proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    after = pod.run("after", "sh", "-c", "cat /proc/self/uid_map; readlink /proc/self/ns/user", linux=ROOT)
    out = pod.output(after)
    assert out[0].split() == ["0", str(HOST_ID), str(LENGTH)]
    assert out[1] == pod.exec(running, "sh", "-c", "readlink /proc/self/ns/user").strip()


def test_cgroup_limits_apply_and_an_oom_kill_is_reported(pod: ConfiguredPod) -> None:
    """The container's cgroup is made and limited from the host's side; it sees its own limit, and the kernel's
    OOM kill is reported as OOMKilled."""
    limited = pb.LinuxContainerConfig(
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=32 * MIB), security_context=ROOT.security_context
    )
    cid = pod.run("limited", "sh", "-c", f"{OWN_MEMORY_LIMIT}; exec sleep 1000", linux=limited)
    memory = cgroups.directory("memory", cgroups.container_cgroup(pod.config.linux.cgroup_parent, cid))
    assert int((memory / ("memory.max" if cgroups.is_v2() else "memory.limit_in_bytes")).read_text()) == 32 * MIB
    deadline = time.monotonic() + 10
    while not log_lines(pod.status(cid).log_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log_lines(pod.status(cid).log_path)[0] == ("stdout", "F", f"limit {32 * MIB}")
    hog = pb.LinuxContainerConfig(
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=16 * MIB), security_context=ROOT.security_context
    )
    st = pod.wait_exit(pod.run("hog", "sh", "-c", "tail /dev/zero", linux=hog), 60)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


@pytest.mark.usefixtures("can")  # before the daemon starts
def test_a_create_cut_by_a_crash_leaves_no_mount_and_the_volume_intact(
    held_node: DaemonProcess, held: Held, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    """The daemon SIGKILLed after the runtime's create, with the container's idmapped root and its volume binds
    made: after the restart and the pod's removal nothing is mounted, and the volume's files were not deleted
    through a bind."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "keep").write_text("kept\n")
    pod = ConfiguredPod(held_node, busybox.name, userns_pod_config("cut", cgroup_parent), tmp_path, "held")
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="cut"),
        image=pb.ImageSpec(image=busybox.name),
        command=["sleep", "1000"],
        mounts=[pb.Mount(container_path="/v", host_path=str(volume), uidMappings=maps, gidMappings=maps)],
        linux=ROOT,
    )
    request = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
    held.crash_during(held_node, "create", lambda c: c.runtime.CreateContainer(request))
    pod.remove()
    assert not [m for m in held_node.mounts() if "/bundles/" in m or "/containers/" in m or "/pods/" in m]
    assert (volume / "keep").read_text() == "kept\n"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (pb.UserNamespace(mode=pb.NamespaceMode.CONTAINER), "userns_options.mode"),
        (pb.UserNamespace(mode=pb.NamespaceMode.TARGET), "userns_options.mode"),
        (
            pb.UserNamespace(
                mode=pb.NamespaceMode.POD,
                uids=[pb.IDMapping(container_id=1, host_id=HOST_ID, length=LENGTH)],
                gids=[pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)],
            ),
            "userns_options.uids[0].container_id",
        ),
        (userns_options(host_id=0), "userns_options.uids[0].host_id: 0 is the node's root"),
        (userns_options(length=LENGTH - 1), "userns_options.uids[0].length: 65535 ids"),
        (userns_options(host_id=(1 << 32) - LENGTH), "userns_options.uids[0]: host ids 4294901760..4294967295 do not"),
    ],
    ids=["container", "target", "id-0-unmapped", "host-root", "short", "past-32-bits"],
)
def test_bad_user_namespaces_are_refused_naming_the_field(
    node: DaemonProcess, cgroup_parent: str, options: pb.UserNamespace, field: str
) -> None:
    config = pod_config("bad", cgroup_parent=cgroup_parent)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
    with node.client() as client:
        failure = rpc_error(lambda: client.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in failure.details
    assert not [m for m in node.mounts() if "/pods/" in m]


def test_a_pod_on_the_host_ids_of_a_running_pod_is_refused(pod: ConfiguredPod, cgroup_parent: str) -> None:
    """Its uid or gid range overlapping a running pod's: FAILED_PRECONDITION naming the field and that pod, and
    nothing made. Once that pod is stopped its range is free (the kubelet runs a pod's next sandbox on it)."""
    config = userns_pod_config("overlapping", cgroup_parent)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(userns_options(HOST_ID + LENGTH - 1))
    with pod.node.client() as client:
        run = pb.RunPodSandboxRequest(config=config)
        failure = rpc_error(lambda: client.runtime.RunPodSandbox(run, timeout=30))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "userns_options.uids[0]: host ids 265535..331070 overlap" in failure.details
        assert pod.id in failure.details
        assert [p.id for p in client.list_pods()] == [pod.id]
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        second = client.runtime.RunPodSandbox(run, timeout=60).pod_sandbox_id
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=second), timeout=60)


def test_a_mount_with_other_mappings_than_the_pods_is_refused(pod: ConfiguredPod, tmp_path: Path) -> None:
    """The kubelet puts the pod's maps on each mount; others would idmap the volume through another range:
    INVALID_ARGUMENT naming the mount's field, nothing left mounted."""
    volume = tmp_path / "volume"
    volume.mkdir()
    pods = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    other = [pb.IDMapping(container_id=0, host_id=HOST_ID + LENGTH, length=LENGTH)]
    mounts = [
        pb.Mount(container_path="/ok", host_path=str(volume), uidMappings=pods, gidMappings=pods),
        pb.Mount(container_path="/v", host_path=str(volume), uidMappings=pods, gidMappings=other),
    ]
    failure = rpc_error(lambda: pod.create("other-maps", "true", linux=ROOT, mounts=mounts))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.mounts[1].gidMappings: 0:265536:65536 differ from the pod's 0:200000:65536" in failure.details
    assert not [m for m in pod.node.mounts() if "/bundles/" in m or "/containers/" in m]


def user_namespaces_offered(node: DaemonProcess) -> dict[str, bool]:
    with node.client() as client:
        handlers = client.runtime.Status(pb.StatusRequest(), timeout=30).runtime_handlers
    return {h.name: h.features.user_namespaces for h in handlers}


def test_a_probe_that_failed_is_not_the_nodes_answer(userns_node: DaemonProcess) -> None:
    """The daemon's first probe cannot make its directory (the root made immutable): no user namespaces offered,
    the failure logged as the probe's, not the kernel's; once it can, the next Status probes again and offers
    them."""
    subprocess.run(["chattr", "+i", str(userns_node.root)], check=True)
    try:
        assert user_namespaces_offered(userns_node) == dict.fromkeys(["", "runc", "crun"], False)
    finally:
        subprocess.run(["chattr", "-i", str(userns_node.root)], check=True)
    assert "the node's probe failed" in userns_node.log()
    assert user_namespaces_offered(userns_node) == dict.fromkeys(["", "runc", "crun"], True)


def test_what_a_killed_probe_left_is_cleaned_by_the_next(userns_node: DaemonProcess, tmp_path: Path) -> None:
    """A daemon SIGKILLed mid-probe leaves its pinned user namespace, tmpfs and idmapped bind mounted under
    ``<root>/idmap-probe``: the next daemon's probe unmounts and removes them, and passes."""
    workdir = userns_node.root / "idmap-probe"
    maps = namespaces.IdMap(0, idmap.PROBE_HOST_ID, idmap.PROBE_LENGTH)
    pinned = namespaces.pin(set(), workdir / "ns", userns=namespaces.UserNamespace(maps, maps))
    base = workdir / "idmap-probe-killed"
    for name in ("tmpfs", "lower", "idmapped"):
        (base / name).mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base / "tmpfs")], check=True)
    idmap.bind(base / "lower", base / "idmapped", pinned["user"])
    assert len([m for m in userns_node.mounts() if "/idmap-probe/" in m]) == 3
    assert user_namespaces_offered(userns_node) == dict.fromkeys(["", "runc", "crun"], True)
    assert not [m for m in userns_node.mounts() if "/idmap-probe" in m]
    assert not workdir.exists()


SYS_RENAMEAT2 = 316  # x86_64
RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap the names ``a`` and ``b`` atomically (renameat2 RENAME_EXCHANGE): each always names something."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_RENAMEAT2, -100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), f"renameat2 {a} {b}")


def test_a_host_path_swapped_for_a_symlink_meanwhile_is_bound_as_it_was_resolved(
    pod: ConfiguredPod, tmp_path: Path
) -> None:
    """The host path is resolved once, and that file is the one whose type makes the bind's target and the one
    bound: with a directory and a symlink to a file exchanged at its name all along, every CreateContainer binds
    one or the other whole (resolved twice, the target was made for one and the other bound: ENOTDIR)."""
    volume, other, file = tmp_path / "volume", tmp_path / "other", tmp_path / "file"
    volume.mkdir()
    file.write_text("a file\n")
    other.symlink_to(file)
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    mounts = [
        pb.Mount(container_path="/plain", host_path=str(volume)),
        pb.Mount(container_path="/mapped", host_path=str(volume), uidMappings=maps, gidMappings=maps),
    ]
    done = threading.Event()

    def swap() -> None:
        while not done.is_set():
            exchange(volume, other)

    swapper = threading.Thread(target=swap)
    swapper.start()
    failures = []
    try:
        for attempt in range(20):
            try:
                pod.create(f"swapped-{attempt}", "true", linux=ROOT, mounts=mounts)
            except grpc.RpcError as exc:
                failures.append(exc.details())
    finally:
        done.set()
        swapper.join()
    assert failures == []


@pytest.fixture
def volume_with_a_submount(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted at ``sub`` (a file of the host's root in it)."""
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(volume / "sub")], check=True)
    try:
        (volume / "sub" / "in-sub").write_text("under it\n")
        (volume / "sub" / "deeper").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(volume / "sub" / "deeper")], check=True)
        (volume / "sub" / "deeper" / "in-deeper").write_text("deeper\n")
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume / "sub" / "deeper")], check=False)
        subprocess.run(["umount", "-l", str(volume / "sub")], check=True)


def test_an_idmapped_volume_has_the_mounts_under_its_host_path(
    pod: ConfiguredPod, volume_with_a_submount: Path, tmp_path: Path
) -> None:
    """An idmapped volume is bound recursively by moorage, as a plain one is (an rbind): a tmpfs mounted under
    the host path is there in the container, idmapped too (its root-owned file is root's inside). crun 1.8 binds
    a volume without its submounts in a pod's user namespace, so each submount is a mount of its own in the
    spec, bound from a descriptor resolved beneath the volume; a mount the config names at a submount's path still
    wins over it and over what is under that submount (nothing is made in its directory)."""
    volume = volume_with_a_submount
    other = tmp_path / "other"
    other.mkdir()
    (other / "in-sub").write_text("the config's own\n")
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    mounts = [
        pb.Mount(container_path="/plain", host_path=str(volume)),
        pb.Mount(container_path="/mapped", host_path=str(volume), uidMappings=maps, gidMappings=maps),
        pb.Mount(container_path="/named", host_path=str(volume)),
        pb.Mount(container_path="/named/sub", host_path=str(other)),
    ]
    script = (
        "cat /plain/sub/in-sub /mapped/sub/in-sub /named/sub/in-sub /plain/sub/deeper/in-deeper"
        " /mapped/sub/deeper/in-deeper; stat -c %u:%g /mapped/sub/in-sub /plain/sub/in-sub; ls /named/sub"
    )
    cid = pod.run("submounts", "sh", "-c", script, linux=ROOT, mounts=mounts)
    assert pod.output(cid) == [
        *["under it", "under it", "the config's own", "deeper", "deeper"],
        *["0:0", "65534:65534", "in-sub"],
    ]
    assert sorted(p.name for p in other.iterdir()) == ["in-sub"]


def test_a_volume_with_a_filesystem_under_it_that_cannot_be_idmapped_is_refused(
    pod: ConfiguredPod, volume_with_a_submount: Path
) -> None:
    """The kernel idmaps a tree whole or not at all: with a proc mounted under the host path, FAILED_PRECONDITION
    naming the mount's host path, nothing left mounted."""
    volume = volume_with_a_submount
    (volume / "proc").mkdir()
    maps = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
    mounts = [pb.Mount(container_path="/mapped", host_path=str(volume), uidMappings=maps, gidMappings=maps)]
    subprocess.run(["mount", "-t", "proc", "proc", str(volume / "proc")], check=True)
    try:
        failure = rpc_error(lambda: pod.create("proc-under", "true", linux=ROOT, mounts=mounts))
    finally:
        subprocess.run(["umount", "-l", str(volume / "proc")], check=True)
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"config.mounts[0].host_path: {volume} cannot be idmapped, or a filesystem" in failure.details
    assert not [m for m in pod.node.mounts() if "/bundles/" in m or "/containers/" in m]


def test_a_container_asking_for_the_nodes_pid_namespace_is_refused(pod: ConfiguredPod) -> None:
    """The pod cannot share the node's PID namespace, nor can a container of it: INVALID_ARGUMENT naming the
    container's field, before anything is made."""
    linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=0), namespace_options=pb.NamespaceOption(pid=pb.NamespaceMode.NODE)
        )
    )
    failure = rpc_error(lambda: pod.create("host-pid", "sh", "-c", "ls /proc", linux=linux))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.linux.security_context.namespace_options.pid: NODE" in failure.details
    assert not [m for m in pod.node.mounts() if "/bundles/" in m or "/containers/" in m]
    with pod.node.client() as client:
        assert not client.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers


def test_a_container_in_a_user_namespace_is_neither_checkpointed_nor_restored(
    pod: ConfiguredPod, busybox: PushedImage, tmp_path: Path
) -> None:
    """Refused before anything is made, as containerd and CRI-O refuse what they cannot do: moorage's idmapped
    mounts are not in what the runtime's checkpoint saves, and CRIU 3.17 cannot restore into the pod's user
    namespace. The container keeps running; nothing is left at the location or in the pod."""
    cid = pod.run("sleeper", "sleep", "1000", linux=ROOT)
    location = tmp_path / "checkpoint.tar"
    with pod.node.client() as client:
        request = pb.CheckpointContainerRequest(container_id=cid, location=str(location), timeout=30)
        failure = rpc_error(lambda: client.runtime.CheckpointContainer(request, timeout=60))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details.startswith(f"container {cid} is in a pod with a user namespace (hostUsers: false)")
    assert not location.exists()
    assert pod.status(cid).state == pb.ContainerState.CONTAINER_RUNNING
    archive = archive_of(
        location,
        {
            "config.dump": json.dumps({"rootfsImageRef": busybox.image.config_digest}).encode(),
            "spec.dump": b"{}",
            "checkpoint/inventory.img": b"not a real image",
        },
    )
    failure = rpc_error(lambda: pod.create("restored", image=str(archive)))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details.startswith(f"config.image.image {archive} is in a pod with a user namespace")
    with pod.node.client() as client:
        listed = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
    assert [c.id for c in listed if c.pod_sandbox_id == pod.id] == [cid]
