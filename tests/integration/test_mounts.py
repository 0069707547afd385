"""Mounts as real containers see them: /sys in privileged pods, recursive read-only binds, mount options and
mount propagation, on runc and crun, checked through /proc/self/mountinfo inside and the mount table outside."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from moorage.runtime.containers.handlers import write_hybrid_wrapper
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import ConfiguredPod, pod_config
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage, running_node

pytestmark = pytest.mark.integration

ROOT = pb.Int64Value(value=0)
PRIVILEGED = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(privileged=True, run_as_user=ROOT)
)
ROOT_USER = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(run_as_user=ROOT))


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
def pod(node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path) -> Iterator[ConfiguredPod]:
    """A plain pod on the default handler (runc)."""
    p = ConfiguredPod(node, busybox.name, pod_config(cgroup_parent=cgroup_parent), tmp_path)
    yield p
    p.remove()


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
        bystander = pod.run("bystander", "sleep", "1000", linux=ROOT_USER)
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


# --- recursive read-only mounts -----------------------------------------------------------------------------------


@pytest.fixture
def bind_source_with_submount(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a tmpfs mounted on its ``tmpfs`` subdirectory, as critest makes for its RRO tests."""
    source = tmp_path / "volume"
    (source / "tmpfs").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "rro-test", str(source / "tmpfs")], check=True)
    try:
        yield source
    finally:
        subprocess.run(["umount", "--lazy", str(source / "tmpfs")], check=False)


def handler_features(node: DaemonProcess) -> dict[str, pb.RuntimeHandlerFeatures]:
    with node.client() as client:
        return {h.name: h.features for h in client.runtime.Status(pb.StatusRequest(), timeout=30).runtime_handlers}


def test_status_reports_recursive_read_only_from_each_runtimes_features(node: DaemonProcess) -> None:
    """runc 1.1 lists rro among its mount options (and this kernel has mount_setattr); crun 1.8 has no
    `features` command but applies rro, known by its version. "" is the default handler, runc."""
    features = handler_features(node)
    assert {name: f.recursive_read_only_mounts for name, f in features.items()} == {
        "": True,
        "runc": True,
        "crun": True,
    }


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_a_recursive_read_only_mount_makes_its_submounts_read_only(
    node: DaemonProcess,
    busybox: PushedImage,
    cgroup_parent: str,
    tmp_path: Path,
    bind_source_with_submount: Path,
    *,
    handler: str,
) -> None:
    pod = ConfiguredPod(node, busybox.name, pod_config("rro", cgroup_parent=cgroup_parent), tmp_path, handler)
    try:
        _submounts_are_read_only(pod, bind_source_with_submount)
    finally:
        pod.remove()


def _submounts_are_read_only(pod: ConfiguredPod, bind_source_with_submount: Path) -> None:
    def mount(rro: bool) -> pb.Mount:
        return pb.Mount(
            container_path="/mnt", host_path=str(bind_source_with_submount), readonly=True, recursive_read_only=rro
        )

    script = (
        "grep ' /mnt/tmpfs ' /proc/self/mountinfo; touch /mnt/tmpfs/{0} 2>&1 && echo wrote; touch /mnt/x 2>&1; exit 0"
    )
    plain = pod.output(pod.run("plain", "sh", "-c", script.format("plain"), mounts=[mount(False)], linux=ROOT_USER))
    rro = pod.output(pod.run("rro", "sh", "-c", script.format("rro"), mounts=[mount(True)], linux=ROOT_USER))
    assert plain[0].split()[5].startswith("rw,")  # plain ro: only the bind itself is read-only
    assert plain[1:] == ["wrote", "touch: /mnt/x: Read-only file system"]
    assert rro[0].split()[5].startswith("ro,")  # rro: the submount too
    assert rro[1:] == ["touch: /mnt/tmpfs/rro: Read-only file system", "touch: /mnt/x: Read-only file system"]
    assert (bind_source_with_submount / "tmpfs" / "plain").exists()
    assert not (bind_source_with_submount / "tmpfs" / "rro").exists()


LEGACY_RUNTIME = """#!/bin/sh
# runc without its features command, as an OCI runtime older than the command would be
[ "$1" = features ] && { echo 'unknown command "features"' >&2; exit 1; }
exec runc "$@"
"""


def test_bad_recursive_read_only_mounts_are_refused(
    registry: Registry, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, bind_source_with_submount: Path
) -> None:
    """critest's three refusals (read-write, rslave, rshared), and a handler whose runtime cannot do it."""
    legacy = tmp_path / "legacy-runtime"
    legacy.write_text(LEGACY_RUNTIME)
    legacy.chmod(0o755)
    handlers = f'[runtime.handlers.runc]\npath = "runc"\n[runtime.handlers.legacy]\npath = "{legacy}"\n'
    source = str(bind_source_with_submount)
    with running_node(registry.host, handlers) as node:
        assert handler_features(node)["legacy"].recursive_read_only_mounts is False
        pod = ConfiguredPod(node, busybox.name, pod_config("rro", cgroup_parent=cgroup_parent), tmp_path)
        legacy_pod = ConfiguredPod(
            node, busybox.name, pod_config("rro-legacy", cgroup_parent=cgroup_parent), tmp_path, "legacy"
        )
        try:
            cases = [
                (pod, pb.Mount(readonly=False), grpc.StatusCode.INVALID_ARGUMENT, "recursive_read_only needs readonly"),
                (pod, pb.Mount(readonly=True, propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER),
                 grpc.StatusCode.INVALID_ARGUMENT, "needs private propagation, not PROPAGATION_HOST_TO_CONTAINER"),
                (pod, pb.Mount(readonly=True, propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL),
                 grpc.StatusCode.INVALID_ARGUMENT, "needs private propagation, not PROPAGATION_BIDIRECTIONAL"),
                (legacy_pod, pb.Mount(readonly=True), grpc.StatusCode.FAILED_PRECONDITION,
                 "does not support recursive read-only mounts"),
            ]  # fmt: skip
            for i, (target, mount, code, text) in enumerate(cases):
                mount.MergeFrom(pb.Mount(container_path="/mnt", host_path=source, recursive_read_only=True))
                err = rpc_error(lambda: target.create(f"bad{i}", "true", mounts=[mount]))  # noqa: B023
                assert (err.code, f"mounts[0]: {text}" in err.details or text in err.details) == (code, True), (
                    err.details
                )
            with node.client() as client:
                assert list(client.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
        finally:
            pod.remove()
            legacy_pod.remove()


# --- Mount.mount_options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_mount_options_reach_the_containers_bind(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path, handler: str
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    shutil.copy("/bin/busybox", volume / "echo")  # busybox runs the applet it is named after
    with node.client() as client:
        assert client.runtime.Status(pb.StatusRequest(), timeout=30).features.mount_options
    pod = ConfiguredPod(node, busybox.name, pod_config(cgroup_parent=cgroup_parent), tmp_path, handler)
    try:
        options = ["noexec", "nodev", "nosuid"]
        mounts = [
            pb.Mount(container_path="/opts", host_path=str(volume), mount_options=options),
            pb.Mount(container_path="/plain", host_path=str(volume)),
        ]
        script = "grep -E ' /(opts|plain) ' /proc/self/mountinfo; /plain/echo ran; /opts/echo ran 2>&1; exit 0"
        lines = pod.output(pod.run("opts", "sh", "-c", script, mounts=mounts, linux=ROOT_USER))
        assert set(mountinfo_line(lines, "/opts")[0].split(",")) >= {"rw", "nosuid", "nodev", "noexec"}
        assert not set(mountinfo_line(lines, "/plain")[0].split(",")) & {"nosuid", "nodev", "noexec"}
        assert lines[2:] == ["ran", "sh: /opts/echo: Permission denied"]

        bad = pb.Mount(container_path="/opts", host_path=str(volume), mount_options=["nodev", "suid"])
        err = rpc_error(lambda: pod.create("bad", "true", mounts=[mounts[1], bad]))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details == (
            "mounts[1].mount_options: 'suid' is not allowed on the mount at /opts (allowed: noexec, nodev, nosuid)"
        )
    finally:
        pod.remove()


# --- mount propagation, as critest checks it -----------------------------------------------------------------------

PROPAGATIONS = {
    "rprivate": pb.MountPropagation.PROPAGATION_PRIVATE,
    "rslave": pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
    "rshared": pb.MountPropagation.PROPAGATION_BIDIRECTIONAL,
}


@pytest.fixture
def propagation_source(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """critest's host side: ``<tmp>/mnt`` bind-mounted on itself, rshared (rprivate for the private case), with an
    empty ``propagationMnt`` directory in it and a ``propagationSrcDir`` holding ``flagFile`` beside it."""
    source = tmp_path / "mnt"
    (source / "propagationMnt").mkdir(parents=True)
    (tmp_path / "propagationSrcDir").mkdir()
    (tmp_path / "propagationSrcDir" / "flagFile").touch()
    mode = "--make-rprivate" if request.node.callspec.params["case"].endswith("rprivate") else "--make-rshared"
    subprocess.run(["mount", "--rbind", str(source), str(source)], check=True)
    subprocess.run(["mount", mode, str(source)], check=True)
    try:
        yield source
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", str(source)], check=False)


@pytest.mark.parametrize("case", [f"{handler} {mode}" for handler in ("runc", "crun") for mode in PROPAGATIONS])
def test_mount_propagation_as_critest_checks_it(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, propagation_source: Path, case: str
) -> None:
    """critest's "runtime should support mount propagation" on a privileged pod: a host mount made after the
    container started shows inside for rslave and rshared; a mount made inside shows on the host only for rshared.
    With crun on a hybrid host this holds only if the wrapper's mount namespace keeps the host's peer groups."""
    handler, propagation = case.split()
    source, tmp = propagation_source, propagation_source.parent
    config = privileged_pod_config("propagation", cgroup_parent, share_pid=False)
    pod = ConfiguredPod(node, busybox.name, config, tmp, handler)
    try:
        mount = pb.Mount(container_path=str(source), host_path=str(source), propagation=PROPAGATIONS[propagation])
        container_id = pod.run("propagation", "sleep", "1000", mounts=[mount], linux=PRIVILEGED)
        (reported,) = pod.status(container_id).mounts
        assert (reported.host_path, reported.propagation) == (str(source), PROPAGATIONS[propagation])

        host_mount = source / "propagationMnt"
        subprocess.run(["mount", "--rbind", str(tmp / "propagationSrcDir"), str(host_mount)], check=True)
        inside = pod.exec(container_id, "ls", "-A", str(host_mount))
        assert inside == ("" if propagation == "rprivate" else "flagFile\n")

        container_mount = source / "containerMntPoint"
        pod.exec(container_id, "sh", "-c", f"mkdir -p {container_mount} && mount --bind /etc {container_mount}")
        seen_on_host = {p.name for p in container_mount.iterdir()}
        if propagation == "rshared":
            assert {"group", "passwd"} <= seen_on_host  # the container's /etc
        else:
            assert seen_on_host == set()
    finally:
        pod.remove()


def _mounted(point: Path) -> bool:
    return any(line.split()[4] == str(point) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_the_crun_wrapper_hides_cgroup2_only_in_its_own_namespace_and_keeps_propagation(tmp_path: Path) -> None:
    """On a host whose mounts are shared (systemd makes / rshared), the hybrid-host wrapper must unmount the
    cgroup2 mount in its own namespace only, and leave every other mount in the host's peer groups: a mount made
    in there under a shared mount shows on the host. Played on a fake hierarchy: a shared tmpfs standing for
    /sys/fs/cgroup with one standing for its cgroup2 mount, and ``sh`` for crun."""
    cgroup, unified, shared = tmp_path / "cgroup", tmp_path / "cgroup" / "unified", tmp_path / "shared"
    cgroup.mkdir()
    (shared / "sub").mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "fake-cgroup", str(cgroup)], check=True)
        subprocess.run(["mount", "--make-rshared", str(cgroup)], check=True)
        unified.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "fake-cgroup2", str(unified)], check=True)
        subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
        subprocess.run(["mount", "--make-rshared", str(shared)], check=True)
        wrapper = tmp_path / "crun-wrapper"
        write_hybrid_wrapper("/bin/sh", str(unified), str(cgroup), wrapper)
        script = f"grep -c ' {unified} ' /proc/self/mountinfo; mount -t tmpfs from-wrapper {shared / 'sub'}"
        result = subprocess.run([str(wrapper), "-c", script], check=False, capture_output=True, text=True, timeout=30)
        assert result.stdout == "0\n", result.stderr  # gone in the wrapper's namespace
        assert _mounted(unified)  # still there on the host
        assert _mounted(shared / "sub")  # the wrapper's namespace kept the host's peer group
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", str(shared)], check=False)
        subprocess.run(["umount", "--recursive", "--lazy", str(cgroup)], check=False)
