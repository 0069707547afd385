"""The CRI ImageService against a real daemon and a real docker-registry: pull, status, list, remove, fs info."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from moorage.cri import pb
from tests.fixtures import images as fixtures
from tests.fixtures.errors import rpc_error
from tests.fixtures.image_store import assert_store_empty, blobs, layer_dirs
from tests.fixtures.registry import Registry
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration


def test_pull_reports_the_config_digest_and_the_registry_digests(node: DaemonProcess, busybox: PushedImage) -> None:
    with node.client() as client:
        image_ref = client.pull_image(busybox.name)
        status = client.image_status(busybox.name)
    # image_ref = Image.id = the config digest (Kubernetes 1.36), the id containerd shows for the same image
    assert image_ref == busybox.image.config_digest
    assert status.image.id == image_ref
    assert list(status.image.repo_tags) == [busybox.name]
    name = busybox.name.rpartition(":")[0]
    assert list(status.image.repo_digests) == [f"{name}@{busybox.digest}"]
    # the digest skopeo (containers/image, as CRI-O) sees for the same tag
    assert json.loads(fixtures.skopeo_inspect(f"docker://{busybox.name}"))["Digest"] == busybox.digest
    assert status.image.size == len(busybox.image.manifest) + busybox.image.size
    assert status.image.uid.value == 1000
    assert status.image.spec.image == image_ref
    assert not status.image.pinned
    # the layer is unpacked where a container's overlay will find it
    (layer,) = layer_dirs(node)
    assert (layer / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert (layer / "bin" / "sh").readlink() == Path("busybox")
    assert (layer / "home" / "app").stat().st_uid == 1000


def test_image_status_finds_the_image_by_id_prefix_tag_and_digest(node: DaemonProcess, busybox: PushedImage) -> None:
    with node.client() as client:
        image_id = client.pull_image(busybox.name)
        name = busybox.name.rpartition(":")[0]
        for ref in (image_id, image_id.removeprefix("sha256:"), image_id[7:19], f"{name}@{busybox.digest}"):
            assert client.image_status(ref).image.id == image_id, ref
        # an unknown image is an empty answer, not an error
        assert not client.image_status(f"{name}:nope").HasField("image")
        assert not client.image_status("sha256:" + "0" * 64).HasField("image")
        verbose = client.image_status(busybox.name, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["imageSpec"]["config"]["Cmd"] == ["/bin/sh"]
    assert info["manifestDigest"] == busybox.digest


def test_list_and_stream_images_with_and_without_filter(node: DaemonProcess, busybox: PushedImage) -> None:
    registry_host = busybox.name.split("/")[0]
    other = fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["true"]})
    fixtures.push(f"http://{registry_host}", "test/other", "2", other)
    with node.client() as client:
        assert client.list_images() == []
        first = client.pull_image(busybox.name)
        second = client.pull_image(f"{registry_host}/test/other:2")
        assert {i.id for i in client.list_images()} == {first, second}
        assert [i.id for i in client.list_images(busybox.name)] == [first]
        assert client.list_images(f"{registry_host}/test/absent:1") == []
        streamed = [i.id for batch in client.images.StreamImages(pb.StreamImagesRequest()) for i in batch.images]
    assert sorted(streamed) == sorted([first, second])
    # the two images share their only layer: one directory, one blob
    assert len(layer_dirs(node)) == 1


@pytest.mark.parametrize(
    ("style", "compression"),
    [("oci", "zstd"), ("oci", "none"), ("docker", "gzip"), ("docker", "none")],
)
def test_pull_each_manifest_style_and_layer_compression(
    node: DaemonProcess, registry: Registry, style: fixtures.Style, compression: fixtures.Compression
) -> None:
    base = fixtures.busybox_layer(compression)
    top = fixtures.layer(
        [fixtures.Entry.file("etc/motd", b"hello\n", uid=7, gid=8, mode=0o4711), fixtures.Entry.whiteout("tmp")],
        compression,
    )
    img = fixtures.image([base, top], style=style)
    fixtures.push(registry, f"test/{style}-{compression}", "v1", img)
    with node.client() as client:
        assert client.pull_image(f"{registry.host}/test/{style}-{compression}:v1") == img.config_digest
    top_dir = next(d for d in layer_dirs(node) if (d / "etc" / "motd").exists())
    motd = (top_dir / "etc" / "motd").stat()
    assert (motd.st_uid, motd.st_gid, motd.st_mode & 0o7777) == (7, 8, 0o4711)
    whiteout = (top_dir / "tmp").stat()
    assert (whiteout.st_rdev, whiteout.st_mode & 0o170000) == (0, 0o020000)  # an overlayfs whiteout


@pytest.mark.parametrize("style", ["oci", "docker"])
def test_pull_of_an_index_picks_this_nodes_platform(node: DaemonProcess, registry: Registry, style: str) -> None:
    layer = fixtures.busybox_layer()
    amd64 = fixtures.image([layer], style=style, architecture="amd64", config={"Labels": {"arch": "amd64"}})  # type: ignore[arg-type]
    arm64 = fixtures.image([layer], style=style, architecture="arm64", variant="v8", config={"Labels": {"a": "b"}})  # type: ignore[arg-type]
    index = fixtures.index([arm64, amd64], style=style)  # type: ignore[arg-type]
    digest = fixtures.push(registry, f"test/multi-{style}", "1", index)
    with node.client() as client:
        image_id = client.pull_image(f"{registry.host}/test/multi-{style}:1")
        status = client.image_status(image_id).image
    assert image_id == amd64.config_digest
    assert list(status.repo_digests) == [f"{registry.host}/test/multi-{style}@{digest}"]
    # by the platform manifest's own digest too
    with node.client() as client:
        assert client.image_status(f"{registry.host}/test/multi-{style}@{amd64.manifest_digest}").image.id == image_id


def test_index_without_this_platform_is_refused_naming_the_platforms(node: DaemonProcess, registry: Registry) -> None:
    s390 = fixtures.image([fixtures.busybox_layer()], architecture="s390x")
    fixtures.push(registry, "test/s390", "1", fixtures.index([s390]))
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/s390:1"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no image for this node's platform linux/amd64; it offers linux/s390x" in err.details


def test_bad_references_and_unknown_images(node: DaemonProcess, registry: Registry) -> None:
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image("Busybox:latest"))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "lower-case" in err.details
        err = rpc_error(lambda: client.pull_image(""))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "image.image is required" in err.details
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/never-pushed:1"))
        assert err.code == grpc.StatusCode.NOT_FOUND
        assert f"{registry.host}/test/never-pushed" in err.details
        assert "MANIFEST_UNKNOWN" in err.details or "NAME_UNKNOWN" in err.details
    assert_store_empty(node)


def test_malicious_layers_are_refused_and_leave_nothing(node: DaemonProcess, registry: Registry) -> None:
    cases = {
        "traversal": fixtures.layer([fixtures.Entry.file("../../escaped", b"x")]),
        "symlink": fixtures.layer([fixtures.Entry.symlink("evil", "/etc"), fixtures.Entry.file("evil/passwd", b"x")]),
        "device": fixtures.layer([fixtures.Entry.device("dev/sda", "block", major=8, minor=0)]),
    }
    expected = {"traversal": "leaves the layer", "symlink": "symlink", "device": "device"}
    with node.client() as client:
        for name, bad in cases.items():
            fixtures.push(registry, f"test/evil-{name}", "1", fixtures.image([fixtures.busybox_layer(), bad]))
            ref = f"{registry.host}/test/evil-{name}:1"
            err = rpc_error(functools.partial(client.pull_image, ref))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT, name
            assert expected[name] in err.details, err.details
        assert client.list_images() == []
    assert_store_empty(node)
    assert not Path("/escaped").exists()


def test_a_layer_bomb_is_stopped_at_image_max_layer_size(unstarted: DaemonProcess, registry: Registry) -> None:
    """A zstd layer of a few KiB that unpacks to 8 MiB, on a node whose image.max_layer_size is 1 MiB: the pull
    fails with RESOURCE_EXHAUSTED naming the key and leaves nothing; the busybox layer (about 1 MiB less) is fine."""
    bomb = fixtures.layer([fixtures.Entry.file("zeros", b"\0" * (8 << 20))], "zstd")
    fixtures.push(registry, "test/bomb", "1", fixtures.image([bomb]))
    node = unstarted
    node.write_config("", image="max_layer_size = 1048576")
    node.trust_registry(registry.host)
    node.start()
    with node.client() as client:
        err = rpc_error(functools.partial(client.pull_image, f"{registry.host}/test/bomb:1"))
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details
        assert "unpacks to more than image.max_layer_size (1048576 bytes)" in err.details
        assert client.list_images() == []
        assert layer_dirs(node) == []
        assert list((node.root / "snapshots" / ".tmp").iterdir()) == []


def test_layer_whose_diff_id_lies_is_refused(node: DaemonProcess, registry: Registry) -> None:
    good = fixtures.busybox_layer()
    img = fixtures.image([good], config_extra={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}})
    fixtures.push(registry, "test/lying", "1", img)
    with node.client() as client:
        err = rpc_error(lambda: client.pull_image(f"{registry.host}/test/lying:1"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not the diff id" in err.details
    assert_store_empty(node)


class _HugeManifestHandler(BaseHTTPRequestHandler):
    """A "registry" whose every manifest is 5 MiB: real registries refuse to store one, so a test serves it."""

    def do_GET(self) -> None:
        body = b'{"schemaVersion":2,"layers":[' + b" " * (5 << 20) + b"]}"
        self.send_response(200 if "/manifests/" in self.path else 404)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client hangs up once it has seen the length
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_oversized_manifest_is_refused(node: DaemonProcess) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HugeManifestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        node.trust_registry(host)
        with node.client() as client:
            err = rpc_error(lambda: client.pull_image(f"{host}/test/huge:1"))
    finally:
        server.shutdown()
        server.server_close()
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the 4194304-byte limit" in err.details
    assert_store_empty(node)


def test_remove_by_tag_removes_every_name_and_is_idempotent(node: DaemonProcess, busybox: PushedImage) -> None:
    registry_host = busybox.name.split("/")[0]
    fixtures.push(f"http://{registry_host}", "test/alias", "x", busybox.image)
    with node.client() as client:
        image_id = client.pull_image(busybox.name)
        assert client.pull_image(f"{registry_host}/test/alias:x") == image_id
        names = client.image_status(image_id).image
        assert len(names.repo_tags) == 2
        assert len(names.repo_digests) == 2
        client.remove_image(f"{registry_host}/test/alias:x")
        assert client.list_images() == []
        assert not client.image_status(busybox.name).HasField("image")
        client.remove_image(f"{registry_host}/test/alias:x")  # again: not an error
        client.remove_image("sha256:" + "f" * 64)
    assert blobs(node) == []
    assert layer_dirs(node) == []


def test_remove_by_id_and_by_digest(node: DaemonProcess, busybox: PushedImage) -> None:
    name = busybox.name.rpartition(":")[0]
    with node.client() as client:
        image_id = client.pull_image(busybox.name)
        client.remove_image(image_id)
        assert client.list_images() == []
        client.pull_image(busybox.name)
        client.remove_image(f"{name}@{busybox.digest}")
        assert client.list_images() == []


def test_an_image_used_by_a_container_is_not_removed(node: DaemonProcess, busybox: PushedImage) -> None:
    with node.client() as client:
        image_id = client.pull_image(busybox.name)
    db = sqlite3.connect(node.root / "metadata.db")  # a container record as the pods code writes it
    with db:
        db.execute("INSERT INTO sandboxes(id, name, state, created_at, config) VALUES ('p1', 'pod', 'READY', 1, x'')")
        db.execute(
            "INSERT INTO containers(id, sandbox_id, name, state, created_at, image_id, config) "
            "VALUES ('c0ffee', 'p1', 'ctr', 'RUNNING', 1, ?, x'')",
            (image_id,),
        )
    db.close()
    with node.client() as client:
        err = rpc_error(lambda: client.remove_image(busybox.name))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "in use by container(s) c0ffee" in err.details
        assert client.image_status(busybox.name).image.id == image_id
    assert len(layer_dirs(node)) == 1


def test_sandbox_image_is_pinned(unstarted: DaemonProcess, registry: Registry, busybox: PushedImage) -> None:
    fixtures.push(registry, "test/pause", "3.10", fixtures.image([fixtures.busybox_layer()], config={"Cmd": ["x"]}))
    unstarted.trust_registry(registry.host)
    unstarted.write_config(f'sandbox_image = "{registry.host}/test/pause:3.10"\n')
    unstarted.start()
    with unstarted.client() as client:
        pause = client.pull_image(f"{registry.host}/test/pause:3.10")
        other = client.pull_image(busybox.name)
        pinned = {i.id: i.pinned for i in client.list_images()}
    assert pinned == {pause: True, other: False}


def test_image_fs_info_counts_layers_and_blobs(node: DaemonProcess, busybox: PushedImage) -> None:
    with node.client() as client:
        before = client.image_fs_info().image_filesystems[0]
        client.pull_image(busybox.name)
        after = client.image_fs_info().image_filesystems[0]
    assert after.fs_id.mountpoint == str(node.root / "snapshots")
    busybox_size = Path("/bin/busybox").stat().st_size
    assert after.used_bytes.value - before.used_bytes.value >= busybox_size
    assert after.inodes_used.value - before.inodes_used.value >= 20  # busybox and its applet links
    assert after.timestamp > 0


def test_images_survive_a_restart(node: DaemonProcess, busybox: PushedImage) -> None:
    with node.client() as client:
        image_id = client.pull_image(busybox.name)
        before = client.image_status(image_id).image
    node.stop()
    node.start()
    with node.client() as client:
        assert client.image_status(image_id).image == before


def test_two_pulls_of_one_image_share_the_download(node: DaemonProcess, registry: Registry) -> None:
    from tests.fixtures.proxy import FaultProxy  # noqa: PLC0415

    big = fixtures.layer([fixtures.Entry.file("big", bytes(range(256)) * 40000)], "none")
    img = fixtures.image([fixtures.busybox_layer(), big])
    fixtures.push(registry, "test/shared", "1", img)
    with FaultProxy(registry) as proxy:
        proxy_host = proxy.url.removeprefix("http://")
        node.trust_registry(proxy_host)
        results: list[str] = []

        def pull() -> None:
            with node.client() as client:
                results.append(client.pull_image(f"{proxy_host}/test/shared:1"))

        threads = [threading.Thread(target=pull) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        blob_gets = [p for p in proxy.paths("GET") if "/blobs/" in p]
    assert results == [img.config_digest] * 3
    assert sorted(blob_gets) == sorted(set(blob_gets)), "a blob was downloaded twice"


def test_schema1_images_are_refused_with_the_reason(unstarted: DaemonProcess) -> None:
    with Registry(schema1=True) as old:
        layer = fixtures.busybox_layer()
        fixtures.push_blob(old, "test/ancient", layer.blob)
        body = fixtures.schema1_manifest("test/ancient", "1", [layer])
        fixtures.push_raw_manifest(old, "test/ancient", "1", body, fixtures.SCHEMA1_SIGNED)
        unstarted.trust_registry(old.host)
        unstarted.start()
        with unstarted.client() as client:
            err = rpc_error(lambda: client.pull_image(f"{old.host}/test/ancient:1"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Docker schema1 image, which moorage does not pull" in err.details
    assert_store_empty(unstarted)
