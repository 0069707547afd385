"""The critest images (tests/critest/images.py) pushed to a real docker-registry and read back from the outside,
through the distribution API: every name critest uses resolves, the images meant to be one are one and the
others differ, configs are upstream's, a rebuild gives the same bytes, and the roots run (under chroot)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.critest import images, rootfs
from tests.fixtures.images import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Index, sha256_digest
from tests.fixtures.registry import Registry

ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
E2E, STAGING = images.E2E, images.STAGING
# The names cri-tools v1.37.0's pkg/validate and pkg/framework pull (tags made explicit).
CRITEST_NAMES = [
    f"{E2E}busybox:1.29-2",
    f"{E2E}nginx:1.14-2",
    f"{E2E}httpd:2.4.39-4",
    f"{E2E}nonewprivs:1.3",
    "registry.k8s.io/pause:3.9",
    "k8s.gcr.io/pause:3.9",
    *(f"{STAGING}test-image-user-{kind}:latest" for kind in ("uid", "username", "uid-group", "username-group")),
    f"{STAGING}test-image-predefined-group:latest",
    f"{STAGING}test-image-latest:latest",
    f"{STAGING}test-image-tag:test",
    f"{STAGING}test-image-tag:all",
    *(f"{STAGING}test-image-{n}:latest" for n in (1, 2, 3)),
    *(f"{STAGING}test-image-tags:{n}" for n in (1, 2, 3)),
    f"{STAGING}hostnet-nginx-{images.GOARCH}:latest",
]


class Pushed:
    """The registry after build_and_push, read with plain HTTP GETs."""

    def __init__(self, registry: Registry, names: list[str]) -> None:
        self.names = names
        self.client = httpx.Client(base_url=registry.url, timeout=30.0, headers={"Accept": ACCEPT})

    def manifest(self, name: str) -> tuple[str, dict[str, Any]]:
        """(digest, manifest JSON) of ``name``'s tag, checking the registry's digest against the bytes."""
        repo, tag = images.split_name(name)
        response = self.client.get(f"/v2/{repo}/manifests/{tag}")
        assert response.status_code == 200, f"{name}: HTTP {response.status_code} {response.text[:200]}"
        digest = response.headers["Docker-Content-Digest"]
        assert digest == sha256_digest(response.content), name
        return digest, response.json()

    def blob(self, name: str, digest: str) -> bytes:
        response = self.client.get(f"/v2/{images.split_name(name)[0]}/blobs/{digest}")
        assert response.status_code == 200, f"{name} blob {digest}: HTTP {response.status_code}"
        assert sha256_digest(response.content) == digest
        return response.content

    def image(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(image manifest, config JSON) of ``name``; an index resolves to its entry for this machine."""
        _, body = self.manifest(name)
        if body["mediaType"] in (OCI_INDEX, DOCKER_LIST):
            (entry,) = [m for m in body["manifests"] if m["platform"]["architecture"] == images.GOARCH]
            repo = images.split_name(name)[0]
            body = self.client.get(f"/v2/{repo}/manifests/{entry['digest']}").json()
        return body, json.loads(self.blob(name, body["config"]["digest"]))

    def image_id(self, name: str) -> str:
        return str(self.image(name)[0]["config"]["digest"])

    def unpack(self, name: str, root: Path) -> None:
        manifest, _ = self.image(name)
        for descriptor in manifest["layers"]:
            data = gzip.decompress(self.blob(name, descriptor["digest"]))
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(root, filter="fully_trusted", numeric_owner=True)


@pytest.fixture(scope="module")
def pushed() -> Iterator[Pushed]:
    with Registry() as registry:
        result = Pushed(registry, images.build_and_push(registry.host))
        try:
            yield result
        finally:
            result.client.close()


def test_every_name_critest_pulls_resolves(pushed: Pushed) -> None:
    assert set(CRITEST_NAMES) <= set(pushed.names)
    for name in pushed.names:
        manifest, config = pushed.image(name)
        assert (config["os"], config["architecture"]) == ("linux", images.GOARCH), name
        assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) >= 1, name


def test_the_same_images_are_one_and_the_others_differ(pushed: Pushed) -> None:
    assert pushed.manifest("registry.k8s.io/pause:3.9") == pushed.manifest("k8s.gcr.io/pause:3.9")
    tags = [pushed.manifest(f"{STAGING}test-image-tags:{n}")[0] for n in (1, 2, 3)]
    assert len(set(tags)) == 1
    distinct = [name for name in CRITEST_NAMES if "test-image-tags:" not in name and name != "k8s.gcr.io/pause:3.9"]
    ids = [pushed.image_id(name) for name in distinct]
    assert len(set(ids)) == len(distinct), "each of these must be an image of its own"


def test_configs_are_upstreams(pushed: Pushed) -> None:
    def config(name: str) -> dict[str, Any]:
        body: dict[str, Any] = pushed.image(name)[1]["config"]
        assert any(env.startswith("PATH=") for env in body["Env"]), name
        return body

    assert config(f"{E2E}busybox:1.29-2")["Cmd"] == ["sh"]
    nginx = config(f"{E2E}nginx:1.14-2")
    assert nginx["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert "80/tcp" in nginx["ExposedPorts"]
    assert config(f"{E2E}httpd:2.4.39-4")["Cmd"] == ["httpd-foreground"]
    assert config(f"{E2E}nonewprivs:1.3")["Entrypoint"] == ["/usr/local/bin/nnp"]
    pause = config("registry.k8s.io/pause:3.9")
    assert (pause["Entrypoint"], pause["User"]) == (["/pause"], "65535:65535")
    users = {"uid": "1002", "username": "www-data", "uid-group": "1003:1004", "username-group": "www-data:1004"}
    for kind, user in users.items():
        assert config(f"{STAGING}test-image-user-{kind}:latest")["User"] == user
    assert config(f"{STAGING}test-image-predefined-group:latest")["User"] == "1000"
    hostnet = f"{STAGING}hostnet-nginx-{images.GOARCH}:latest"
    assert pushed.manifest(hostnet)[1]["mediaType"] == DOCKER_MANIFEST  # single-arch, as upstream
    assert config(hostnet)["Entrypoint"] == ["/docker-entrypoint.sh"]


def test_a_rebuild_gives_the_same_bytes(pushed: Pushed) -> None:
    for cached in (images.catalogue, images.nginx_layer, rootfs.busybox_base):
        cached.cache_clear()
    for name, target in images.catalogue().items():
        digest = target.digest if isinstance(target, Index) else target.manifest_digest
        assert pushed.manifest(name)[0] == digest, name


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_roots_run(pushed: Pushed, tmp_path: Path) -> None:
    def run(root: Path, *argv: str, user: str = "0:0") -> str:
        command = ("chroot", f"--userspec={user}", str(root), *argv)
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{argv}: {proc.returncode} {proc.stderr}"
        return proc.stdout

    busybox, nnp, nginx = tmp_path / "busybox", tmp_path / "nnp", tmp_path / "nginx"
    pushed.unpack(f"{E2E}busybox:1.29-2", busybox)
    script = "echo -n hello; id -nu; ls -A /tmp; pgrep -x no-such-process || echo none; ipcs -m | grep -c Shared"
    assert run(busybox, "/bin/sh", "-c", script) == "helloroot\nnone\n1\n"
    assert run(busybox, "id", "-nu", user="65534:65534") == "nobody\n"
    assert os.stat(busybox / "bin" / "ls").st_ino == os.stat(busybox / "bin" / "busybox").st_ino  # hard links
    pushed.unpack(f"{E2E}nonewprivs:1.3", nnp)
    assert run(nnp, "/usr/local/bin/nnp", user="1000:1000") == "Effective uid: 0\n"  # setuid root
    pushed.unpack(f"{E2E}nginx:1.14-2", nginx)
    proc = subprocess.run(["chroot", str(nginx), "nginx", "-v"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr  # its libraries are all there
    assert "nginx version" in proc.stderr
