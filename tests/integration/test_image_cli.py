"""The image commands of the ``moorage`` CLI against a real daemon, and image import for air-gapped nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import images as fixtures
from tests.integration.daemon import DaemonProcess, PushedImage

pytestmark = pytest.mark.integration


def moorage(node: DaemonProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "moorage.cli.main", "--endpoint", node.endpoint, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"moorage {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_pull_images_inspect_fsinfo_rmi(node: DaemonProcess, busybox: PushedImage) -> None:
    pulled = moorage(node, "pull", busybox.name).stdout
    short = busybox.image.layers[0].digest.removeprefix("sha256:")[:12]
    assert f"{short}: Pull complete" in pulled
    assert f"Digest: {busybox.digest}" in pulled
    assert f"Image is up to date for {busybox.image.config_digest}" in pulled

    table = moorage(node, "images").stdout.splitlines()
    repo, tag = busybox.name.rsplit(":", 1)
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[:3] == [repo, tag, busybox.image.config_digest[7:20]]
    assert moorage(node, "images", "-q").stdout.split() == [busybox.image.config_digest]

    inspected = json.loads(moorage(node, "image", "inspect", busybox.name).stdout)
    assert inspected["status"]["id"] == busybox.image.config_digest
    assert inspected["info"]["imageSpec"]["config"]["User"] == "1000"

    fsinfo = json.loads(moorage(node, "image", "fsinfo").stdout)
    assert int(fsinfo["imageFilesystems"][0]["usedBytes"]["value"]) > Path("/bin/busybox").stat().st_size

    removed = moorage(node, "rmi", busybox.name).stdout
    assert f"Deleted: {busybox.name}" in removed
    assert moorage(node, "images", "-q").stdout.strip() == ""


def test_cli_errors_name_the_status_and_the_problem(node: DaemonProcess, busybox: PushedImage) -> None:
    registry_host = busybox.name.split("/")[0]
    failed = moorage(node, "pull", f"{registry_host}/test/nothing:1", check=False)
    assert failed.returncode != 0
    assert "NOT_FOUND" in failed.stderr
    missing = moorage(node, "image", "inspect", "sha256:" + "0" * 64, check=False)
    assert missing.returncode != 0
    assert "no such image" in missing.stderr


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_import_an_archive_gives_the_same_image_as_a_pull(
    node: DaemonProcess, busybox: PushedImage, tmp_path: Path, kind: str
) -> None:
    archive = tmp_path / "image.tar"
    fixtures.skopeo_copy(f"docker://{busybox.name}", f"{kind}:{archive}:example.com/tools/busybox:1.0")
    out = moorage(node, "image", "import", str(archive)).stdout
    assert f"Loaded image {busybox.image.config_digest} example.com/tools/busybox:1.0" in out
    with node.client() as client:
        status = client.image_status("example.com/tools/busybox:1.0").image
        assert status.id == busybox.image.config_digest
        # the same image pulled later shares the imported layer
        assert client.pull_image(busybox.name) == status.id
    layers = [p for p in (node.root / "snapshots").iterdir() if not p.name.startswith(".")]
    assert len(layers) == 1
    assert (layers[0] / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_import_refuses_what_is_not_an_image_archive(node: DaemonProcess, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball at all" * 100)
    failed = moorage(node, "image", "import", str(junk), check=False)
    assert failed.returncode != 0
    assert "INVALID_ARGUMENT" in failed.stderr
    assert str(junk) in failed.stderr
