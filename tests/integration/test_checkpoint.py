"""CheckpointContainer on a real daemon: a busybox container whose state changes (a counter in a file of its
writable layer, the count itself in its shell's memory), checkpointed by runc and CRIU to an archive in
CRI-O's layout while it keeps running; and every refusal, each leaving nothing at the location and the
container running.

Whether CRIU works is the node's kernel's to say: where ``criu check`` fails (this node's kernel is newer
than Debian 12's CRIU understands), the checkpoint is refused with CRIU's own reason and the archive test is
skipped; where it passes (Debian's kernel: `make test-cgroupv2` runs the archive test in CI; ``scripts/test-cgroupv2
-m integration tests/integration/test_checkpoint.py`` runs them all), the archive is written and checked."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import cgroups
from tests.fixtures.checkpoints import archive_of
from tests.fixtures.errors import rpc_error
from tests.fixtures.pods import Pod
from tests.fixtures.pods import pod as pod  # noqa: PLC0414 (the fixture: a pod of the test's own)
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

ROOT_USER = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))
)
COUNTER = "rm /etc/group; i=0; while :; do i=$((i+1)); echo $i > /counter; sleep 0.2; done"
"""Deletes a file of its image, then counts in memory and writes the count to its writable layer."""


def node_criu() -> tuple[bool, list[str]]:
    """Whether ``criu check`` passes on this node, and CRIU's error messages (without source locations)."""
    criu = shutil.which("criu")
    if criu is None:
        return False, ["not installed"]
    proc = subprocess.run([criu, "check"], capture_output=True, text=True, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode == 0, [line.split("): ", 1)[1] for line in lines if line.startswith("Error (")]


CRIU_WORKS, CRIU_ERRORS = node_criu()


def crun_can_checkpoint() -> bool:
    crun = shutil.which("crun")
    if crun is None:
        return False
    return subprocess.run([crun, "checkpoint", "--help"], capture_output=True, check=False).returncode == 0


def checkpoint(node: DaemonProcess, container_id: str, location: str, timeout: int = 60) -> None:
    with node.client() as client:
        request = pb.CheckpointContainerRequest(container_id=container_id, location=location, timeout=timeout)
        client.runtime.CheckpointContainer(request, timeout=timeout + 30)


def counter(pod: Pod, container_id: str) -> int:
    with pod.node.client() as client:
        request = pb.ExecSyncRequest(container_id=container_id, cmd=["cat", "/counter"], timeout=10)
        response = client.runtime.ExecSync(request, timeout=30)
    assert response.exit_code == 0, response.stderr
    return int(response.stdout)


def still_counting(pod: Pod, container_id: str) -> None:
    """The container runs and its loop goes on."""
    assert pod.status(container_id).state == pb.ContainerState.CONTAINER_RUNNING
    before = counter(pod, container_id)
    deadline = time.monotonic() + 10
    while counter(pod, container_id) <= before:
        assert time.monotonic() < deadline, "the container's counter stopped"
        time.sleep(0.2)


def nothing_left(node: DaemonProcess, location: Path) -> None:
    assert not location.exists()
    assert [p.name for p in location.parent.iterdir() if p.name.startswith(f".{location.name}")] == []
    work = node.state / "checkpoints"
    assert not work.exists() or list(work.iterdir()) == []


def started_counter(pod: Pod, at_least: int = 2) -> str:
    container_id = pod.run("counter", "sh", "-c", COUNTER, linux=ROOT_USER)
    deadline = time.monotonic() + 10
    while True:
        try:
            if counter(pod, container_id) >= at_least:
                return container_id
        except AssertionError:
            pass  # /counter not written yet
        assert time.monotonic() < deadline, "the counter did not start"
        time.sleep(0.2)


@pytest.mark.skipif(CRIU_WORKS, reason="criu check passes on this node: the archive test covers it")
def test_where_criu_cannot_run_the_checkpoint_is_refused_with_criu_s_reason(pod: Pod, tmp_path: Path) -> None:
    container_id = started_counter(pod)
    location = tmp_path / "checkpoint.tar"
    for _ in range(2):  # the second answer is the cached check's
        failure = rpc_error(lambda: checkpoint(pod.node, container_id, str(location)))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.details.startswith("CRIU cannot checkpoint on this node: ")
        for error in CRIU_ERRORS:
            assert error in failure.details
        nothing_left(pod.node, location)
    still_counting(pod, container_id)


@pytest.mark.cgroup  # so `make test-cgroupv2` runs it in CI, on Debian's kernel where CRIU works
@pytest.mark.skipif(cgroups.DRIVER == "systemd", reason="the pod fixture's cgroup parent is a cgroupfs one")
@pytest.mark.skipif(not CRIU_WORKS, reason=f"criu check fails on this node: {'; '.join(CRIU_ERRORS)}")
def test_a_running_container_is_checkpointed_in_cri_o_s_layout_keeps_running_and_is_restored(
    pod: Pod, busybox: PushedImage, tmp_path: Path
) -> None:
    container_id = started_counter(pod, at_least=5)  # more than a fresh start counts to at once
    location = tmp_path / "checkpoint.tar"

    checkpoint(pod.node, container_id, str(location))

    assert location.stat().st_mode & 0o777 == 0o600  # every memory page of the container is in it
    with tarfile.open(location) as tar:
        names = set(tar.getnames())
        assert {"checkpoint", "config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files", "dump.log"} <= names
        images = {n.removeprefix("checkpoint/") for n in names if n.startswith("checkpoint/")}
        assert "inventory.img" in images
        assert any(n.startswith("pages-") for n in images)  # the shell's memory, with its count
        config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
        spec = json.load(tar.extractfile("spec.dump"))  # type: ignore[arg-type]
        deleted = json.load(tar.extractfile("deleted.files"))  # type: ignore[arg-type]
        diff_member = tar.extractfile("rootfs-diff.tar")
        assert diff_member is not None
        with tarfile.open(fileobj=diff_member) as diff:
            counted = diff.extractfile("counter")
            assert counted is not None
            counted_value = counted.read()
            assert int(counted_value) >= 2
            assert "proc" not in diff.getnames()  # the runtime's mount points are not the container's changes
    assert config["id"] == container_id
    assert config["rootfsImage"] == busybox.name
    assert config["rootfsImageRef"] == pod.status(container_id).image_ref
    assert config["runtime"] == "runc"
    assert spec["process"]["args"] == ["sh", "-c", COUNTER]
    assert deleted == ["/etc/group"]
    nothing_left(pod.node, tmp_path / "absent.tar")
    still_counting(pod, container_id)
    checkpointed = int(counted_value)
    restored = pod.run("restored", image=str(location), linux=ROOT_USER)  # CRI-O's restore: the archive as the image
    assert counter(pod, restored) >= checkpointed  # the shell's count went on from memory, not from 1
    with pod.node.client() as client:
        request = pb.ExecSyncRequest(container_id=restored, cmd=["sh", "-c", "[ -e /etc/group ]"], timeout=10)
        assert client.runtime.ExecSync(request, timeout=30).exit_code == 1  # deleted before the checkpoint
    still_counting(pod, restored)
    still_counting(pod, container_id)


@pytest.mark.skipif(not CRIU_WORKS, reason=f"criu check fails on this node: {'; '.join(CRIU_ERRORS)}")
def test_checkpoints_of_one_container_at_once_are_taken_one_after_the_other(pod: Pod, tmp_path: Path) -> None:
    container_id = started_counter(pod)
    locations = [tmp_path / f"checkpoint-{n}.tar" for n in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda location: checkpoint(pod.node, container_id, str(location)), locations))
    for location in locations:
        with tarfile.open(location) as tar:
            assert "checkpoint/inventory.img" in tar.getnames()
    still_counting(pod, container_id)


def test_an_unknown_container_is_not_found(pod: Pod, tmp_path: Path) -> None:
    location = tmp_path / "checkpoint.tar"
    failure = rpc_error(lambda: checkpoint(pod.node, "0123456789ab", str(location)))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert "0123456789ab" in failure.details
    nothing_left(pod.node, location)


def test_a_container_not_running_is_refused(pod: Pod, tmp_path: Path) -> None:
    location = tmp_path / "checkpoint.tar"
    created = pod.create("created", "sleep", "1000")
    exited = pod.run("exited", "true")
    pod.wait_exit(exited)
    for container_id, state in ((created, "CREATED"), (exited, "EXITED")):
        failure = rpc_error(lambda cid=container_id: checkpoint(pod.node, cid, str(location)))  # type: ignore[misc]
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.details == f"container {container_id} is {state}, not RUNNING; cannot checkpoint it"
        nothing_left(pod.node, location)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("", "location is required"),
        ("checkpoint.tar", "location 'checkpoint.tar' must be an absolute path"),
        ("./checkpoints/c.tar", "location './checkpoints/c.tar' must be an absolute path"),
    ],
)
def test_the_location_must_be_an_absolute_path(pod: Pod, tmp_path: Path, location: str, message: str) -> None:
    container_id = started_counter(pod)
    failure = rpc_error(lambda: checkpoint(pod.node, container_id, location))
    assert (failure.code, failure.details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    still_counting(pod, container_id)


def test_the_location_s_directory_must_exist(pod: Pod, tmp_path: Path) -> None:
    container_id = started_counter(pod)
    location = tmp_path / "missing" / "checkpoint.tar"
    failure = rpc_error(lambda: checkpoint(pod.node, container_id, str(location)))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.details == f"location {location}: directory {location.parent} does not exist"
    assert not location.parent.exists()
    still_counting(pod, container_id)


@pytest.mark.skipif(crun_can_checkpoint(), reason="this node's crun was built with CRIU")
def test_a_runtime_without_a_checkpoint_command_is_refused(
    node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path
) -> None:
    pod = Pod(node, busybox.name, cgroup_parent, tmp_path, handler="crun")
    try:
        container_id = started_counter(pod)
        location = tmp_path / "checkpoint.tar"
        failure = rpc_error(lambda: checkpoint(node, container_id, str(location)))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "crun" in failure.details
        assert "has no checkpoint command" in failure.details
        nothing_left(node, location)
        still_counting(pod, container_id)
    finally:
        with node.client() as client:
            client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def test_create_from_a_local_file_that_is_no_restorable_archive_is_refused_before_anything_is_made(
    pod: Pod, tmp_path: Path
) -> None:
    """CRI-O's rule: an image naming an existing local file is a checkpoint archive to restore from."""
    unknown = "sha256:" + "0" * 64
    orphan = archive_of(tmp_path / "checkpoint.tar", {"config.dump": dumps(rootfsImageRef=unknown), "spec.dump": b"{}"})
    failure = rpc_error(lambda: pod.create("restored", image=str(orphan)))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.details == (
        f"config.image.image {str(orphan)!r}: the image the checkpoint was taken of ({unknown}) is not on the node; "
        "pull it first"
    )
    other = archive_of(tmp_path / "other.tar", {"hello": b"world"})
    failure = rpc_error(lambda: pod.create("restored", image=str(other)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is a local file but not a checkpoint archive" in failure.details
    with pod.node.client() as client:
        listed = client.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [c for c in listed if c.metadata.name == "restored"] == []
    assert no_bundles(pod.node)


def no_bundles(node: DaemonProcess) -> bool:
    bundles = node.state / "bundles"
    return not bundles.exists() or list(bundles.iterdir()) == []


def dumps(**config: str) -> bytes:
    return json.dumps(config).encode()


def rootfs_diff(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_container_created_from_an_archive_has_its_files_and_waits_for_start_to_restore(
    pod: Pod, busybox: PushedImage, tmp_path: Path
) -> None:
    """Without CRIU's part: the container is made from the checkpointed image with the archive's file-system
    changes; StartContainer refuses where CRIU cannot run, and the container is removed whole."""
    image_id = busybox.image.config_digest
    archive = archive_of(
        tmp_path / "checkpoint.tar",
        {
            "config.dump": dumps(rootfsImageRef=image_id),
            "spec.dump": b"{}",
            "checkpoint/inventory.img": b"not a real image",
            "rootfs-diff.tar": rootfs_diff({"counter": b"41\n", "../escape": b"no"}),
            "deleted.files": json.dumps(["/etc/group", "/../../outside"]).encode(),
        },
    )
    (tmp_path / "outside").write_text("kept")
    failure = rpc_error(lambda: pod.create("restored", image=str(archive)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT  # a member that would land outside the root
    assert failure.details.startswith(f"checkpoint archive {archive}: ")
    assert "escape" in failure.details
    assert no_bundles(pod.node)
    archive = archive_of(
        tmp_path / "checkpoint.tar",
        {
            "config.dump": dumps(rootfsImageRef=image_id),
            "spec.dump": b"{}",
            "checkpoint/inventory.img": b"not a real image",
            "rootfs-diff.tar": rootfs_diff({"counter": b"41\n"}),
            "deleted.files": json.dumps(["/etc/group", "/../../outside"]).encode(),
        },
    )
    container_id = pod.create("restored", image=str(archive))
    status = pod.status(container_id)
    assert status.state == pb.ContainerState.CONTAINER_CREATED
    assert status.image_ref == image_id
    upper = pod.node.root / "containers" / container_id / "upper"
    assert (upper / "counter").read_text() == "41\n"
    assert (upper / "etc" / "group").is_char_device()  # overlayfs's whiteout: deleted from the image's files
    assert (tmp_path / "outside").read_text() == "kept"
    bundle = pod.node.state / "bundles" / container_id
    assert (bundle / "restore" / "checkpoint" / "inventory.img").read_bytes() == b"not a real image"
    pod.node.stop(signal.SIGKILL)  # a daemon restart keeps it waiting for its start
    pod.node.start()
    assert pod.status(container_id).state == pb.ContainerState.CONTAINER_CREATED
    assert (bundle / "restore" / "checkpoint" / "inventory.img").exists()
    if not CRIU_WORKS:
        with pod.node.client() as client:
            start = pb.StartContainerRequest(container_id=container_id)
            failure = rpc_error(lambda: client.runtime.StartContainer(start, timeout=30))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.details.startswith("CRIU cannot checkpoint on this node: ")
        assert pod.status(container_id).state == pb.ContainerState.CONTAINER_CREATED
    with pod.node.client() as client:
        client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
    assert not bundle.exists()
    assert not upper.exists()
