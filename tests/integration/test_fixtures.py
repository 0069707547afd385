"""The image-pull fixtures work: a real registry (no auth, basic, token), pushed images that skopeo reads
back with our digests, and each fault of the proxy as a plain HTTP client sees it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.fixtures import registry as registry_module
from tests.fixtures.images import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    SCHEMA1_SIGNED,
    Entry,
    Image,
    PushError,
    big_image,
    busybox_layer,
    image,
    index,
    layer,
    push,
    push_blob,
    push_raw_manifest,
    schema1_manifest,
    skopeo_copy,
    skopeo_inspect,
    ssl_context,
)
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.registry import SERVICE, Registry

pytestmark = pytest.mark.integration

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=ssl_context()) as client:
        yield client


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def busybox() -> Image:
    return image([busybox_layer()], config={"Cmd": ["sh"], "User": "app"})


@pytest.fixture(scope="module")
def pushed(registry: Registry, busybox: Image) -> Image:
    push(registry, "fixtures/busybox", "latest", busybox)
    return busybox


@pytest.fixture
def proxy(registry: Registry, pushed: Image) -> Iterator[FaultProxy]:
    with FaultProxy(registry) as p:
        yield p


def blob_url(base: str, img: Image) -> str:
    return f"{base}/v2/fixtures/busybox/blobs/{img.layers[0].digest}"


def read_into(buffer: bytearray, response: httpx.Response) -> None:
    for chunk in response.iter_raw():
        buffer += chunk


def decompress(blob: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        with zstandard.ZstdDecompressor().stream_reader(blob) as reader:
            return reader.read()
    return blob


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- building ------------------------------------------------------------------------------------------


def test_layers_hold_exactly_the_entries_asked_for() -> None:
    evil = tarfile.TarInfo("../evil")
    evil.type = tarfile.SYMTYPE
    evil.linkname = "/etc/shadow"
    entries = [
        Entry.directory("app", mode=0o750, uid=1000, gid=1000),
        Entry.file("/app/run", b"#!/bin/sh\n", mode=0o4755, xattrs={"user.k": "v", "security.capability": b"\x01\xff"}),
        Entry.hardlink("app/run2", "/app/run"),
        Entry.symlink("app/link", "/bin/busybox"),
        Entry.whiteout("etc/gone"),
        Entry.opaque("var/cache"),
        Entry.device("dev/null2", "char", major=1, minor=3),
        Entry.raw(evil),
    ]
    for compression in ("gzip", "zstd", "none"):
        lay = layer(entries, compression)
        assert lay.digest == sha256(lay.blob)
        assert lay.size == len(lay.blob)
        tar_bytes = decompress(lay.blob, compression)
        assert lay.diff_id == sha256(tar_bytes)
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            members = {m.name: m for m in tar}
        assert list(members) == ["app", "app/run", "app/run2", "app/link", "etc/.wh.gone", "var/cache/.wh..wh..opq",
                                 "dev/null2", "../evil"]  # fmt: skip
        assert members["app"].uid == 1000
        assert members["app/run"].mode == 0o4755
        assert members["app/run"].pax_headers["SCHILY.xattr.user.k"] == "v"
        capability = members["app/run"].pax_headers["SCHILY.xattr.security.capability"]
        assert capability.encode("utf-8", "surrogateescape") == b"\x01\xff"
        assert members["app/run2"].islnk()
        assert members["app/run2"].linkname == "app/run"
        assert members["dev/null2"].ischr()
        assert (members["dev/null2"].devmajor, members["dev/null2"].devminor) == (1, 3)
        assert members["../evil"].issym()
        assert members["../evil"].linkname == "/etc/shadow"
    assert layer(entries).digest == layer(entries).digest  # deterministic


def test_image_config_and_manifest_are_consistent(busybox: Image) -> None:
    config = json.loads(busybox.config)
    assert config["rootfs"]["diff_ids"] == [busybox_layer().diff_id]
    assert config["config"]["User"] == "app"
    assert config["config"]["Cmd"] == ["sh"]
    assert config["os"] == "linux"
    assert config["architecture"] == "amd64"
    manifest = json.loads(busybox.manifest)
    assert manifest["config"]["digest"] == busybox.config_digest == sha256(busybox.config)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert busybox.size == manifest["config"]["size"] + manifest["layers"][0]["size"]
    docker = json.loads(image([busybox_layer()], style="docker").manifest)
    assert docker["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"


# --- the registry, read back by skopeo -----------------------------------------------------------------


@pytest.mark.parametrize("style", ["oci", "docker"])
def test_pushed_image_reads_back_in_skopeo_with_our_digest(registry: Registry, style: str) -> None:
    img = image([busybox_layer()], style="oci" if style == "oci" else "docker")
    digest = push(registry, "fixtures/styles", style, img)
    assert digest == img.manifest_digest
    ref = f"docker://{registry.host}/fixtures/styles:{style}"
    assert json.loads(skopeo_inspect(ref))["Digest"] == digest
    assert skopeo_inspect(ref, raw=True).encode() == img.manifest


@pytest.mark.parametrize("style", ["oci", "docker"])
def test_pushed_index_reads_back_in_skopeo(registry: Registry, style: str) -> None:
    amd64 = image([busybox_layer()], style="oci" if style == "oci" else "docker")
    arm64 = image([busybox_layer("zstd")], architecture="arm64", variant="v8")
    idx = index([amd64, arm64], style="oci" if style == "oci" else "docker")
    assert push(registry, "fixtures/multi", style, idx) == idx.digest
    ref = f"docker://{registry.host}/fixtures/multi:{style}"
    assert json.loads(skopeo_inspect(ref))["Digest"] == idx.digest
    platforms = [m["platform"] for m in json.loads(skopeo_inspect(ref, raw=True))["manifests"]]
    assert platforms == [amd64.platform, {"architecture": "arm64", "os": "linux", "variant": "v8"}]
    arm_ref = f"docker://{registry.host}/fixtures/multi@{arm64.manifest_digest}"
    assert json.loads(skopeo_inspect(arm_ref))["Architecture"] == "arm64"


def test_skopeo_copy_makes_archives(registry: Registry, pushed: Image, tmp_path: Path) -> None:
    src = f"docker://{registry.host}/fixtures/busybox:latest"
    skopeo_copy(src, f"docker-archive:{tmp_path / 'docker.tar'}:fixtures/busybox:latest")
    skopeo_copy(src, f"oci-archive:{tmp_path / 'oci.tar'}:latest")
    with tarfile.open(tmp_path / "docker.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["docker.io/fixtures/busybox:latest"]  # skopeo's normalization
    with tarfile.open(tmp_path / "oci.tar") as tar:
        assert f"blobs/sha256/{pushed.config_digest.split(':')[1]}" in tar.getnames()


def test_push_blob_and_schema1(http: httpx.Client, registry: Registry) -> None:
    data = os.urandom(1000)
    assert push_blob(registry, "fixtures/blobs", data) == sha256(data)
    assert http.get(f"{registry.url}/v2/fixtures/blobs/blobs/{sha256(data)}").content == data
    push(registry, "fixtures/old", "base", image([busybox_layer()]))
    signed = schema1_manifest("fixtures/old", "v1", [busybox_layer()])
    unsigned = json.dumps({k: v for k, v in json.loads(signed).items() if k != "signatures"}).encode()
    with pytest.raises(PushError) as refused:  # 2.8 has schema1 off by default
        push_raw_manifest(registry, "fixtures/old", "v1", signed, SCHEMA1_SIGNED)
    assert refused.value.status == 500  # "manifest schema v1 unsupported"
    with Registry(schema1=True) as old:
        push(old, "fixtures/old", "base", image([busybox_layer()]))
        with pytest.raises(PushError) as refused:
            push_raw_manifest(old, "fixtures/old", "v1", unsigned, SCHEMA1_SIGNED)
        assert refused.value.status == 400  # "missing signature key"
        digest = push_raw_manifest(old, "fixtures/old", "v1", signed, SCHEMA1_SIGNED)
        got = http.get(f"{old.url}/v2/fixtures/old/manifests/v1", headers={"Accept": SCHEMA1_SIGNED})
        assert got.headers["Content-Type"] == SCHEMA1_SIGNED
        assert got.headers["Docker-Content-Digest"] == digest


def test_big_image_streams_from_files(http: httpx.Client, registry: Registry, tmp_path: Path) -> None:
    layers = big_image(tmp_path, total_mb=4, layers=2)
    assert all(isinstance(lay.data, Path) for lay in layers)
    assert [lay.data.stat().st_size for lay in layers if isinstance(lay.data, Path)] == [lay.size for lay in layers]
    assert sum(lay.size for lay in layers) > 3 * 1024 * 1024  # barely compressible
    img = image(layers)
    push(registry, "fixtures/big", "latest", img)
    head = http.head(f"{registry.url}/v2/fixtures/big/blobs/{layers[1].digest}")
    assert int(head.headers["Content-Length"]) == layers[1].size


# --- authentication ------------------------------------------------------------------------------------


def test_basic_auth_registry(http: httpx.Client, busybox: Image) -> None:
    with Registry("basic", users={"alice": "wonderland"}) as reg:
        assert reg.credentials == ("alice", "wonderland")
        push(reg, "fixtures/private", "v1", busybox)
        url = f"{reg.url}/v2/fixtures/private/manifests/v1"
        assert http.get(url, headers=ACCEPT).status_code == 401
        assert http.get(url, headers=ACCEPT, auth=("alice", "wrong")).status_code == 401
        answer = http.get(url, headers=ACCEPT, auth=("alice", "wonderland"))
        assert answer.status_code == 200
        assert answer.headers["Docker-Content-Digest"] == busybox.manifest_digest
        ref = f"docker://{reg.host}/fixtures/private:v1"
        assert json.loads(skopeo_inspect(ref, credentials=reg.credentials))["Digest"] == busybox.manifest_digest


def token(http: httpx.Client, realm: str, scope: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    return http.get(realm, params={"service": SERVICE, "scope": scope}, auth=auth or httpx.USE_CLIENT_DEFAULT)


def test_token_auth_registry(http: httpx.Client, busybox: Image) -> None:
    with Registry("token") as reg:
        push(reg, "fixtures/private", "v1", busybox)
        assert reg.token_requests == 1
        url = f"{reg.url}/v2/fixtures/private/manifests/v1"
        challenge = http.get(url, headers=ACCEPT)
        assert challenge.status_code == 401
        assert challenge.headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert 'scope="repository:fixtures/private:pull"' in challenge.headers["WWW-Authenticate"]
        assert reg.token_server is not None
        realm, scope = reg.token_server.realm, "repository:fixtures/private:pull"
        assert token(http, realm, scope, ("moorage", "wrong")).status_code == 401
        assert token(http, realm, scope).status_code == 401  # no anonymous pull
        bearer = token(http, realm, scope, reg.credentials).json()["token"]
        answer = http.get(url, headers=ACCEPT | {"Authorization": f"Bearer {bearer}"})
        assert answer.status_code == 200
        assert answer.headers["Docker-Content-Digest"] == busybox.manifest_digest
        assert reg.token_requests == 2
        form = {"grant_type": "password", "username": "moorage", "password": "moorage-password", "scope": scope}
        oauth = http.post(realm, data=form | {"service": SERVICE, "client_id": "test"})
        assert oauth.status_code == 200
        assert "access_token" in oauth.json()
        ref = f"docker://{reg.host}/fixtures/private:v1"
        assert json.loads(skopeo_inspect(ref, credentials=reg.credentials))["Digest"] == busybox.manifest_digest


def test_token_auth_anonymous_pull(http: httpx.Client, busybox: Image) -> None:
    with Registry("token", anonymous_pull=True) as reg:
        push(reg, "fixtures/public", "v1", busybox)
        assert reg.token_server is not None
        anonymous = token(http, reg.token_server.realm, "repository:fixtures/public:pull,push").json()["token"]
        assert reg.token_server.issued[-1]["access"] == [
            {"type": "repository", "name": "fixtures/public", "actions": ["pull"]}
        ]
        headers = {"Authorization": f"Bearer {anonymous}"}
        assert http.get(f"{reg.url}/v2/fixtures/public/manifests/v1", headers=ACCEPT | headers).status_code == 200
        assert http.post(f"{reg.url}/v2/fixtures/public/blobs/uploads/", headers=headers).status_code == 401
        with pytest.raises(PushError):
            push(reg.url, "fixtures/public", "v2", busybox)  # anonymous: pull only


# --- the fault proxy -----------------------------------------------------------------------------------


def test_proxy_fail_then_success(http: httpx.Client, proxy: FaultProxy, pushed: Image) -> None:
    proxy.fail("/manifests/", status=503, times=1)
    proxy.fail("/blobs/", status=429, retry_after=7, method="GET")
    url = f"{proxy.url}/v2/fixtures/busybox/manifests/latest"
    assert http.get(url, headers=ACCEPT).status_code == 503
    ok = http.get(url, headers=ACCEPT)
    assert ok.status_code == 200
    assert ok.content == pushed.manifest
    assert http.head(blob_url(proxy.url, pushed)).status_code == 200  # method filter: HEAD passes
    limited = http.get(blob_url(proxy.url, pushed))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert sha256(http.get(blob_url(proxy.url, pushed)).content) == pushed.layers[0].digest
    assert [status for _, _, status in proxy.requests] == [503, 200, 200, 429, 200]
    assert proxy.request_headers[0]["accept"] == ACCEPT["Accept"]


def test_proxy_drop_corrupt_stall(http: httpx.Client, proxy: FaultProxy, pushed: Image) -> None:
    blob = pushed.layers[0].blob
    proxy.drop_after("/blobs/", 1000)
    received = bytearray()
    with http.stream("GET", blob_url(proxy.url, pushed)) as response:
        assert response.headers["Content-Length"] == str(len(blob))
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(received, response)
    assert bytes(received) == blob[:1000]

    proxy.corrupt("/blobs/", offset=100_000)
    corrupted = http.get(blob_url(proxy.url, pushed)).content
    assert len(corrupted) == len(blob)
    assert corrupted[100_000] == blob[100_000] ^ 0xFF
    assert corrupted[:100_000] == blob[:100_000]
    assert corrupted[100_001:] == blob[100_001:]

    proxy.stall("/blobs/", 0.4, after_bytes=10)
    with pytest.raises(httpx.ReadTimeout):
        http.get(blob_url(proxy.url, pushed), timeout=httpx.Timeout(5.0, read=0.1))
    start = time.monotonic()
    proxy.stall("/blobs/", 0.3)
    assert http.get(blob_url(proxy.url, pushed)).content == blob
    assert time.monotonic() - start >= 0.3


def test_proxy_range_and_uploads_pass_through(http: httpx.Client, proxy: FaultProxy, registry: Registry) -> None:
    img = image([layer([Entry.file("hello", b"hello, proxy\n")])])
    assert push(proxy.url, "fixtures/via-proxy", "v1", img) == img.manifest_digest
    puts = [path for path in proxy.paths("PUT") if "/blobs/uploads/" in path]
    assert len(puts) == 2
    assert "digest=sha256" in puts[0]  # Location rewritten to the proxy
    url = f"{proxy.url}/v2/fixtures/via-proxy/blobs/{img.layers[0].digest}"
    part = http.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == img.layers[0].blob[10:20]
    assert proxy.request_headers[-1]["range"] == "bytes=10-19"


def test_proxy_redirects_blobs_to_storage_without_credentials(http: httpx.Client, busybox: Image) -> None:
    with Registry("basic") as reg, FaultProxy(reg) as proxy:
        push(reg, "fixtures/busybox", "latest", busybox)
        proxy.redirect_blobs = True
        first = http.get(blob_url(proxy.url, busybox), auth=reg.credentials)
        assert first.status_code == 307
        location = first.headers["Location"]
        assert location.startswith(f"{proxy.url}/_storage/v2/")
        proxy.drop_after("/_storage/", 50)
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(location)  # no Authorization: the proxy remembered the original one
        resumed = http.get(location, headers={"Range": "bytes=50-"})
        assert resumed.status_code == 206
        assert resumed.content == busybox.layers[0].blob[50:]
        followed = http.get(blob_url(proxy.url, busybox), auth=reg.credentials, follow_redirects=True)
        assert sha256(followed.content) == busybox.layers[0].digest
        statuses = [(method, path.startswith("/_storage/"), status) for method, path, status in proxy.requests]
        assert statuses == [("GET", False, 307), ("GET", True, 200), ("GET", True, 206), ("GET", False, 307),
                            ("GET", True, 200)]  # fmt: skip
        assert http.get(location.split("?")[0] + "?sig=forged").status_code == 403


# --- cleanup -------------------------------------------------------------------------------------------


def test_everything_is_cleaned_up(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    with Registry("token") as reg, FaultProxy(reg) as proxy:
        assert reg.proc is not None
        assert reg.dir is not None
        pid, root, proxy_port = reg.proc.pid, reg.dir, int(proxy.host.split(":")[1])
        http.get(f"{proxy.url}/v2/")  # leaves a keep-alive connection open
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists()
    assert not [t for t in threading.enumerate() if t.name in ("fault-proxy", "token-server")]
    with pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{proxy_port}/v2/")

    monkeypatch.setattr(registry_module, "REGISTRY_BINARY", "/bin/false")
    broken = Registry()
    with pytest.raises(RuntimeError, match="exited with 1"):
        broken.start()
    assert broken.dir is not None
    assert not broken.dir.exists()
