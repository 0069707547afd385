from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from moorage.errors import InvalidImage
from moorage.images.archive import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    MAX_JSON_SIZE,
    Archive,
    ArchiveLayer,
)
from moorage.images.manifest import Platform, node_platform

NAME = "example.com/busybox:1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
V1_ID = "a" * 64


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(data: bytes) -> str:
    return "sha256:" + _hex(data)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


# An image built with umoci, then archived by skopeo in both formats.


@dataclass(frozen=True)
class Built:
    manifest_digest: str
    config_digest: str
    layer: ArchiveLayer  # as the layout's manifest describes it (gzip)
    diff_id: str
    docker_archive: Path
    oci_archive: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not (shutil.which("umoci") and shutil.which("skopeo")):
        pytest.skip("umoci and skopeo are needed")
    tmp = tmp_path_factory.mktemp("image")
    layout, bundle = tmp / "layout", tmp / "bundle"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", f"{layout}:base")
    _run("umoci", "unpack", *rootless, "--image", f"{layout}:base", str(bundle))
    (bundle / "rootfs/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", bundle / "rootfs/bin/busybox")
    _run("umoci", "repack", "--image", f"{layout}:base", str(bundle))
    _run("umoci", "config", "--image", f"{layout}:base", "--config.cmd=/bin/sh", "--tag", "v1")
    for transport in ("docker-archive", "oci-archive"):
        dest = f"{transport}:{tmp / transport}.tar:{NAME}"
        _run("skopeo", "--insecure-policy", "copy", "-q", f"oci:{layout}:v1", dest)

    index = json.loads((layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "v1"]
    manifest = json.loads((layout / "blobs/sha256" / entry["digest"].removeprefix("sha256:")).read_bytes())
    config_digest, layer = manifest["config"]["digest"], manifest["layers"][0]
    config = json.loads((layout / "blobs/sha256" / config_digest.removeprefix("sha256:")).read_bytes())
    return Built(
        manifest_digest=entry["digest"],
        config_digest=config_digest,
        layer=ArchiveLayer(layer["digest"], layer["mediaType"], layer["size"]),
        diff_id=config["rootfs"]["diff_ids"][0],
        docker_archive=tmp / "docker-archive.tar",
        oci_archive=tmp / "oci-archive.tar",
    )


def _read_blob(archive: Archive, layer: ArchiveLayer) -> bytes:
    with archive.open_blob(layer) as stream:
        return stream.read()


def test_oci_archive_from_skopeo(built: Built) -> None:
    with Archive(built.oci_archive) as archive:
        (image,) = archive.images()
        assert image.names == (NAME,)
        assert image.manifest is not None
        assert _digest(image.manifest) == built.manifest_digest
        assert image.manifest_media_type == OCI_MANIFEST
        assert image.config_digest == built.config_digest == _digest(image.config)
        (layer,) = image.layers
        assert layer == built.layer
        blob = _read_blob(archive, layer)
        assert _digest(blob) == layer.digest
        assert len(blob) == layer.size


@pytest.mark.parametrize("compress", [False, True])
def test_docker_archive_from_skopeo(built: Built, tmp_path: Path, compress: bool) -> None:
    path = built.docker_archive
    if compress:
        path = tmp_path / "docker-archive.tar.gz"
        path.write_bytes(gzip.compress(built.docker_archive.read_bytes(), compresslevel=1))
    with Archive(path) as archive:
        (image,) = archive.images()
        assert image.names == (NAME,)
        assert image.manifest is None
        assert image.manifest_media_type is None
        assert image.config_digest == built.config_digest == _digest(image.config)
        (layer,) = image.layers
        assert layer.media_type == DOCKER_LAYER
        assert layer.digest == built.diff_id  # skopeo stores the layer uncompressed
        blob = _read_blob(archive, layer)
        assert _digest(blob) == layer.digest
        assert len(blob) == layer.size


# Small archives crafted here.


def _layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buffer.getvalue()


LAYER = _layer()


def _write_tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """A tar of ``files``; ``links`` maps a name to (tarfile.SYMTYPE or LNKTYPE, target)."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


def _config(layer: bytes = LAYER, architecture: str = "amd64") -> bytes:
    return json.dumps({"architecture": architecture, "os": "linux", "rootfs": {"diff_ids": [_digest(layer)]}}).encode()


def _docker_files(layer: bytes = LAYER, tags: list[str] | None = None) -> dict[str, bytes]:
    config = _config(layer)
    entry = {"Config": f"{_hex(config)}.json", "RepoTags": tags, "Layers": [f"{V1_ID}/layer.tar"]}
    return {"manifest.json": json.dumps([entry]).encode(), f"{_hex(config)}.json": config, f"{V1_ID}/layer.tar": layer}


def _put(blobs: dict[str, bytes], data: bytes, media_type: str, **extra: object) -> dict[str, object]:
    blobs[f"blobs/sha256/{_hex(data)}"] = data
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _manifest(blobs: dict[str, bytes], architecture: str = "amd64", **extra: object) -> dict[str, object]:
    config = _put(blobs, _config(architecture=architecture), OCI_CONFIG)
    layer = _put(blobs, LAYER, OCI_LAYER)
    manifest = json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode()
    return _put(blobs, manifest, OCI_MANIFEST, **extra)


def _oci_files(blobs: dict[str, bytes], *entries: dict[str, object]) -> dict[str, bytes]:
    index = json.dumps({"schemaVersion": 2, "manifests": list(entries)}).encode()
    return {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index, **blobs}


def _platform(value: Platform) -> dict[str, str]:
    return {"os": value.os, "architecture": value.architecture, "variant": value.variant}


def test_legacy_docker_save_with_gzip_layer_and_repositories(tmp_path: Path) -> None:
    layer = gzip.compress(LAYER)
    files = _docker_files(layer, tags=None)
    files["repositories"] = json.dumps({"busybox": {"latest": V1_ID}}).encode()
    with Archive(_write_tar(tmp_path / "a.tar", files)) as archive:
        (image,) = archive.images()
        assert image.names == ("busybox:latest",)
        (got,) = image.layers
        assert got == ArchiveLayer(_digest(layer), DOCKER_LAYER_GZIP, len(layer))
        assert _read_blob(archive, got) == layer


def test_nested_index_picks_the_node_platform(tmp_path: Path) -> None:
    node = node_platform()
    blobs: dict[str, bytes] = {}
    children = [
        _manifest(blobs, "s390x", platform={"os": "plan9", "architecture": "s390x"}),
        _manifest(blobs, node.architecture, platform=_platform(node)),
        _manifest(blobs, "unknown", platform={"os": "unknown", "architecture": "unknown"}),
    ]
    index = _put(blobs, json.dumps({"schemaVersion": 2, "manifests": children}).encode(), OCI_INDEX)
    index["annotations"] = {
        "io.containerd.image.name": "docker.io/library/busybox:1",
        "org.opencontainers.image.ref.name": "1",
    }
    with Archive(_write_tar(tmp_path / "a.tar", _oci_files(blobs, index))) as archive:
        (image,) = archive.images()
        assert image.names == ("docker.io/library/busybox:1",)
        assert json.loads(image.config)["architecture"] == node.architecture
        assert image.manifest is not None
        assert _digest(image.manifest) == children[1]["digest"]


def test_index_entries_for_other_platforms_are_skipped(tmp_path: Path) -> None:
    blobs: dict[str, bytes] = {}
    name = {"org.opencontainers.image.ref.name": NAME}
    arm64 = _manifest(
        blobs, "arm64", platform={"os": "linux", "architecture": "arm64", "variant": "v8"}, annotations=name
    )
    amd64 = _manifest(blobs, "amd64", platform={"os": "linux", "architecture": "amd64"}, annotations=name)
    path = _write_tar(tmp_path / "a.tar", _oci_files(blobs, amd64, arm64))
    with Archive(path, platform=Platform("linux", "arm64")) as archive:
        (image,) = archive.images()
        assert image.names == (NAME,)
        assert json.loads(image.config)["architecture"] == "arm64"


def test_only_other_platforms(tmp_path: Path) -> None:
    blobs: dict[str, bytes] = {}
    children = [
        _manifest(blobs, "s390x", platform={"os": "linux", "architecture": "s390x"}),
        _manifest(blobs, "arm", platform={"os": "linux", "architecture": "arm", "variant": "v6"}),
    ]
    index = _put(blobs, json.dumps({"schemaVersion": 2, "manifests": children}).encode(), OCI_INDEX)
    path = _write_tar(tmp_path / "a.tar", _oci_files(blobs, index))
    only = r"no image for linux/arm/v7, only for: linux/arm/v6, linux/s390x"
    with Archive(path, platform=Platform("linux", "arm")) as archive, pytest.raises(InvalidImage, match=only):
        archive.images()


@pytest.mark.parametrize(
    ("machine", "expected"),
    [("x86_64", "linux/amd64"), ("aarch64", "linux/arm64"), ("armv7l", "linux/arm/v7"), ("riscv64", "linux/riscv64")],
)
def test_node_platform(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr("platform.machine", lambda: machine)
    assert str(node_platform()) == expected


# Bad archives: each builder writes one into the directory it is given.


def _not_a_tarball(tmp: Path) -> Path:
    path = tmp / "a.tar"
    path.write_bytes(b"this is not a tar archive\n" * 40)
    return path


def _neither_format(tmp: Path) -> Path:
    return _write_tar(tmp / "a.tar", {"hello.txt": b"hi"})


def _docker_missing_layer(tmp: Path) -> Path:
    files = _docker_files()
    del files[f"{V1_ID}/layer.tar"]
    return _write_tar(tmp / "a.tar", files)


def _oci_missing_manifest(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    entry = _manifest(blobs)
    del blobs[f"blobs/sha256/{str(entry['digest']).removeprefix('sha256:')}"]
    return _write_tar(tmp / "a.tar", _oci_files(blobs, entry))


def _oci_missing_layer(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    entry = _manifest(blobs)
    del blobs[f"blobs/sha256/{_hex(LAYER)}"]
    return _write_tar(tmp / "a.tar", _oci_files(blobs, entry))


def _docker_config_mismatch(tmp: Path) -> Path:
    files = _docker_files()
    config_name = next(name for name in files if name.endswith(".json") and name != "manifest.json")
    files[config_name] = _config(architecture="arm64")
    return _write_tar(tmp / "a.tar", files)


def _oci_config_mismatch(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    entry = _manifest(blobs)
    config = _config()
    blobs[f"blobs/sha256/{_hex(config)}"] = _config(architecture="arm64")  # same size, other bytes
    return _write_tar(tmp / "a.tar", _oci_files(blobs, entry))


def _docker_bad_json(tmp: Path) -> Path:
    files = _docker_files()
    files["manifest.json"] = b'[{"Config": '
    return _write_tar(tmp / "a.tar", files)


def _oci_bad_json(tmp: Path) -> Path:
    files = _oci_files({})
    files["index.json"] = b"{manifests: []}"
    return _write_tar(tmp / "a.tar", files)


def _docker_symlink_layer(tmp: Path) -> Path:
    files = _docker_files()
    files["real.tar"] = files.pop(f"{V1_ID}/layer.tar")
    return _write_tar(tmp / "a.tar", files, {f"{V1_ID}/layer.tar": (tarfile.SYMTYPE, "../real.tar")})


def _oci_hardlink_layer(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    entry = _manifest(blobs)
    layer_path = f"blobs/sha256/{_hex(LAYER)}"
    blobs["real"] = blobs.pop(layer_path)
    return _write_tar(tmp / "a.tar", _oci_files(blobs, entry), {layer_path: (tarfile.LNKTYPE, "real")})


def _docker_huge_manifest(tmp: Path) -> Path:
    files = _docker_files()
    files["manifest.json"] = b" " * MAX_JSON_SIZE + files["manifest.json"]
    return _write_tar(tmp / "a.tar", files)


def _oci_huge_manifest_descriptor(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    entry = _manifest(blobs)
    entry["size"] = 1 << 40
    return _write_tar(tmp / "a.tar", _oci_files(blobs, entry))


def _oci_layer_size_mismatch(tmp: Path) -> Path:
    blobs: dict[str, bytes] = {}
    config = _put(blobs, _config(), OCI_CONFIG)
    layer = _put(blobs, LAYER, OCI_LAYER)
    layer["size"] = len(LAYER) + 1
    manifest = _put(blobs, json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode(), OCI_MANIFEST)
    return _write_tar(tmp / "a.tar", _oci_files(blobs, manifest))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_not_a_tarball, r"not a tar archive \(plain, gzip, bzip2 or xz\)"),
        (_neither_format, r"neither a docker-archive \(no manifest.json\) nor an oci-archive"),
        (_docker_missing_layer, f"{V1_ID}/layer.tar is missing from the archive"),
        (_oci_missing_manifest, "blob of index.json manifests.0.: blobs/sha256/[0-9a-f]{64} is missing"),
        (_oci_missing_layer, f"blobs/sha256/{_hex(LAYER)} is missing from the archive"),
        (_docker_config_mismatch, "hashes to sha256:[0-9a-f]{64}, not the digest in its name"),
        (_oci_config_mismatch, "config of manifest .* hashes to sha256:[0-9a-f]{64}, not sha256:"),
        (_docker_bad_json, "manifest.json: malformed JSON: Expecting value"),
        (_oci_bad_json, "index.json: malformed JSON: Expecting property name"),
        (_docker_symlink_layer, "layer.tar is a symlink, not a file"),
        (_oci_hardlink_layer, f"{_hex(LAYER)} is a hardlink, not a file"),
        (_docker_huge_manifest, r"manifest.json: \d+ bytes is over the 4194304 byte limit"),
        (_oci_huge_manifest_descriptor, "1099511627776 bytes is over the 4194304 byte limit"),
        (_oci_layer_size_mismatch, f"holds {len(LAYER)} bytes, manifest says {len(LAYER) + 1}"),
    ],
)
def test_bad_archives(tmp_path: Path, build: Callable[[Path], Path], message: str) -> None:
    path = build(tmp_path)
    with pytest.raises(InvalidImage, match=message) as caught, Archive(path) as archive:
        archive.images()
    assert caught.value.message.startswith(f"{path}: ")


def test_open_blob_of_a_foreign_layer(tmp_path: Path) -> None:
    path = _write_tar(tmp_path / "a.tar", _docker_files())
    with Archive(path) as archive, pytest.raises(InvalidImage, match="not a layer of any image"):
        archive.open_blob(ArchiveLayer("sha256:" + "0" * 64, DOCKER_LAYER, 1))
