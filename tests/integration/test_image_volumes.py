"""Image volumes (CRI Mount.image, Mount.image_sub_path) on a real daemon: a second image's files mounted
read-only into a busybox container, checked from inside (ExecSync) and outside (the mount table, the daemon's
dirs), through removal, failed creates, RemoveImage and a daemon SIGKILL."""

from __future__ import annotations

import functools
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.errors import rpc_error
from tests.fixtures.images import Entry
from tests.fixtures.pods import Pod
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration

ROOT_USER = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0))
)
HELLO = b"hello from the volume\n"


@pytest.fixture(scope="module")
def volume_image(registry: Registry) -> PushedImage:
    """busybox's layer (so its binaries run from the volume), then a layer of known files: /data with a
    symlink to a directory of the image, a symlink climbing out of the image's root, /tmp whited out."""
    files = fixtures.layer(
        [
            Entry.directory("data"),
            Entry.file("data/hello.txt", HELLO),
            Entry.directory("data/sub"),
            Entry.file("data/sub/deep.txt", b"deep\n"),
            Entry.symlink("data/link", "/data/sub"),
            Entry.symlink("escape", "../../../../../etc"),
            Entry.file("notadir", b"a file\n"),
            Entry.whiteout("tmp"),
        ]
    )
    img = fixtures.image([fixtures.busybox_layer(), files])
    digest = fixtures.push(registry, "test/volume", "1", img)
    return PushedImage(f"{registry.host}/test/volume:1", img, digest)


class VolumePod(Pod):
    def volume_ref(self, image: PushedImage) -> str:
        """Pull the volume's image as the kubelet does first; its image_ref (the id) is what the kubelet sends."""
        with self.node.client() as client:
            return client.pull_image(image.name)

    def with_volume(
        self, name: str, ref: str, *command: str, sub_path: str = "", mounts: list[pb.Mount] | None = None
    ) -> str:
        """A container (as root) with ``ref``'s image volume at /vol, or with ``mounts``."""
        mounts = mounts if mounts is not None else [image_mount(ref, sub_path=sub_path)]
        return self.create(name, *(command or ("sleep", "1000")), linux=ROOT_USER, mounts=mounts)

    def start(self, container_id: str) -> None:
        with self.node.client() as client:
            client.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)

    def exec(self, container_id: str, *cmd: str) -> pb.ExecSyncResponse:
        with self.node.client() as client:
            request = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=20)
            return client.runtime.ExecSync(request, timeout=60)

    def remove(self, container_id: str) -> None:
        with self.node.client() as client:
            client.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=60)

    def volume_mounts(self) -> list[str]:
        return [m for m in self.node.mounts() if "/image-volumes/" in m]

    def assert_nothing_left(self) -> None:
        """No container, bundle, writable layer or mount of a failed create."""
        with self.node.client() as client:
            assert client.runtime.ListContainers(pb.ListContainersRequest()).containers == []
        assert not any((self.node.state / "bundles").glob("*"))
        assert not any((self.node.root / "containers").glob("*"))
        assert [m for m in self.node.mounts() if "/bundles/" in m] == []


def image_mount(ref: str, *, sub_path: str = "", readonly: bool = True, path: str = "/vol") -> pb.Mount:
    return pb.Mount(container_path=path, readonly=readonly, image=pb.ImageSpec(image=ref), image_sub_path=sub_path)


@pytest.fixture
def pod(node: DaemonProcess, busybox: PushedImage, cgroup_parent: str, tmp_path: Path) -> Iterator[VolumePod]:
    p = VolumePod(node, busybox.name, cgroup_parent, tmp_path)
    yield p
    with node.client() as client:
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
    assert p.volume_mounts() == []  # removing the pod removed its containers' volumes


def test_an_image_volume_shows_the_image_read_only_and_runs_its_binaries(
    pod: VolumePod, volume_image: PushedImage
) -> None:
    ref = pod.volume_ref(volume_image)
    assert ref == volume_image.image.config_digest
    container_id = pod.with_volume("reader", ref)
    st = pod.status(container_id)
    (mount,) = [m for m in st.mounts if m.container_path == "/vol"]
    assert (mount.image.image, mount.image.image_ref, mount.readonly) == (ref, ref, True)  # critest's check
    (point,) = pod.volume_mounts()
    assert point == str(pod.node.state / "bundles" / container_id / "image-volumes" / "0" / "rootfs")

    pod.start(container_id)
    assert pod.exec(container_id, "cat", "/vol/data/hello.txt").stdout == HELLO
    assert pod.exec(container_id, "ls", "/vol/tmp").exit_code != 0  # the upper layer's whiteout holds
    write = pod.exec(container_id, "touch", "/vol/data/new")  # as root: only the mount can refuse it
    assert write.exit_code != 0
    assert b"Read-only file system" in write.stderr
    ran = pod.exec(container_id, "/vol/bin/ls", "/vol/data")  # not noexec
    assert (ran.exit_code, ran.stdout.split()) == (0, [b"hello.txt", b"link", b"sub"])
    inside = pod.exec(container_id, "cat", "/proc/self/mountinfo").stdout.decode().splitlines()
    (line,) = [line.split() for line in inside if line.split()[4] == "/vol"]
    options = line[5].split(",")
    assert "ro" in options
    assert "noexec" not in options


def test_a_volume_named_by_tag_reports_the_image_id(pod: VolumePod, volume_image: PushedImage) -> None:
    pod.volume_ref(volume_image)
    container_id = pod.with_volume("by-name", volume_image.name, "cat", "/vol/data/hello.txt")
    (mount,) = pod.status(container_id).mounts
    assert (mount.image.image, mount.image.image_ref) == (volume_image.name, volume_image.image.config_digest)
    pod.start(container_id)
    assert pod.wait_exit(container_id).exit_code == 0


def test_a_sub_path_mounts_that_directory_resolved_inside_the_image(pod: VolumePod, volume_image: PushedImage) -> None:
    ref = pod.volume_ref(volume_image)
    cases = {"data": "hello.txt", "data/link": "deep.txt", "escape": "passwd", "./data//sub/": "deep.txt"}
    ids = {}
    for i, (sub_path, expected) in enumerate(cases.items()):
        ids[sub_path] = pod.with_volume(f"sub{i}", ref, sub_path=sub_path)
        pod.start(ids[sub_path])
        listing = pod.exec(ids[sub_path], "ls", "/vol").stdout.split()
        assert expected.encode() in listing, (sub_path, listing)
    assert pod.exec(ids["data"], "ls", "/vol/data").exit_code != 0  # the sub path, not the image's root
    # A symlink climbing out of the image ends at the image's own /etc, never the node's:
    passwd = pod.exec(ids["escape"], "cat", "/vol/passwd").stdout.decode()
    assert passwd.startswith("root:x:0:0:root:/root:/bin/sh\napp:x:1000:")
    (status_mount,) = pod.status(ids["data"]).mounts
    assert status_mount.image_sub_path == "data"


def test_bad_volumes_are_refused_and_leave_nothing_behind(pod: VolumePod, volume_image: PushedImage) -> None:
    ref = pod.volume_ref(volume_image)
    good = image_mount(ref, path="/good")
    cases = [
        ([image_mount(ref, readonly=False)], grpc.StatusCode.INVALID_ARGUMENT, "must be readonly"),
        ([image_mount("registry.invalid/nothing:1")], grpc.StatusCode.NOT_FOUND, "'registry.invalid/nothing:1'"),
        ([image_mount(ref, sub_path="not-existing")], grpc.StatusCode.INVALID_ARGUMENT,
         "mounts[0].image_sub_path: 'not-existing' does not exist in image"),
        ([good, image_mount(ref, sub_path="data/missing")], grpc.StatusCode.INVALID_ARGUMENT,
         "mounts[1].image_sub_path: 'data/missing' does not exist"),  # after the first volume was mounted
        ([image_mount(ref, sub_path="notadir")], grpc.StatusCode.INVALID_ARGUMENT, "is not a directory"),
        ([image_mount(ref, sub_path="../etc")], grpc.StatusCode.INVALID_ARGUMENT, "must not contain '..'"),
        ([image_mount(ref, sub_path="/etc")], grpc.StatusCode.INVALID_ARGUMENT, "must be relative"),
        ([good, pb.Mount(container_path="/x", host_path="/nonexistent/moorage")], grpc.StatusCode.INVALID_ARGUMENT,
         "mounts[1].host_path: /nonexistent/moorage does not exist"),  # the spec fails after the volume's mount
    ]  # fmt: skip
    for mounts, code, text in cases:
        err = rpc_error(functools.partial(pod.with_volume, "bad", ref, mounts=mounts))
        assert (err.code, text in err.details) == (code, True), err.details
        pod.assert_nothing_left()


def test_remove_image_refuses_a_volume_in_use_and_removal_unmounts(pod: VolumePod, volume_image: PushedImage) -> None:
    ref = pod.volume_ref(volume_image)
    container_id = pod.with_volume("user", ref)
    pod.start(container_id)
    with pod.node.client() as client:
        err = rpc_error(lambda: client.remove_image(ref))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert container_id[:13] in err.details
        assert client.image_status(ref).image.id == ref
        client.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=30)
        pod.remove(container_id)
        assert pod.volume_mounts() == []
        assert not (pod.node.state / "bundles" / container_id).exists()
        client.remove_image(ref)  # no longer in use
        assert not client.image_status(ref).HasField("image")


def test_a_daemon_crash_leaves_no_stale_volume_mount(pod: VolumePod, volume_image: PushedImage) -> None:
    ref = pod.volume_ref(volume_image)
    container_id = pod.with_volume("survivor", ref)
    pod.start(container_id)
    half = pod.with_volume("half", ref)
    pod.node.stop(signal.SIGKILL)
    db = sqlite3.connect(pod.node.root / "metadata.db")  # as if the crash came before the container was CREATED
    with db:
        db.execute("UPDATE containers SET state = 'CREATING' WHERE id = ?", (half,))
    db.close()
    pod.node.start()
    assert not (pod.node.state / "bundles" / half).exists()  # start-up recovery undid it, volume and all
    assert len(pod.volume_mounts()) == 1
    assert pod.exec(container_id, "cat", "/vol/data/hello.txt").stdout == HELLO
    (mount,) = pod.status(container_id).mounts
    assert mount.image.image_ref == ref
    with pod.node.client() as client:
        assert rpc_error(lambda: client.remove_image(ref)).code == grpc.StatusCode.FAILED_PRECONDITION
    pod.remove(container_id)
    assert pod.volume_mounts() == []
    assert not (pod.node.state / "bundles" / container_id).exists()
