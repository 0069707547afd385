"""Image tarballs for ``moorage image import FILE``, read in place (nothing is extracted to disk).

Two formats, either one optionally gzip-compressed as a whole:

    docker-archive (``docker save``, ``skopeo copy ... docker-archive:``)
        manifest.json     [{"Config": "<hex>.json", "RepoTags": ["busybox:latest"], "Layers": ["<id>/layer.tar"]}]
        repositories      optional, {"busybox": {"latest": "<v1 id>"}}: names when RepoTags is empty
        <hex>.json        the image config (``blobs/sha256/<hex>`` for docker >= 25)
        <id>/layer.tar    a layer, usually an uncompressed tar (skopeo: ``<hex>.tar``; docker >= 25:
                          ``blobs/sha256/<hex>``)

    oci-archive (an OCI image layout in a tar: ``skopeo copy ... oci-archive:``, ``buildx --output type=oci``)
        oci-layout        {"imageLayoutVersion": "1.0.0"}
        index.json        descriptors of manifests or nested indexes, named by the annotation
                          ``io.containerd.image.name`` or else ``org.opencontainers.image.ref.name``
        blobs/sha256/<hex>

An archive holding both index.json and manifest.json (docker >= 25) is read as an oci-archive, which keeps the
manifests. Where an index offers several platforms, the node's is chosen (or an entry without a platform).

Manifest, index and config JSON (at most :data:`MAX_JSON_SIZE` each) are checked against their digests here;
layers are not (the importer hashes them while copying), but their sizes are those of the stored members. A
docker-archive has no manifest, so a layer's digest comes from its ``blobs/sha256/<hex>`` path, else from the
config's diff_id when the layer is an uncompressed tar (the two are the same thing), else from hashing the member.
Anything wrong is :class:`~moorage.errors.InvalidImage` naming the archive and the member.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from moorage.errors import InvalidImage
from moorage.images.manifest import Platform, node_platform

MAX_JSON_SIZE = 4 << 20
MAX_INDEX_DEPTH = 4

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX_PATH = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?")
_BLOB_PATH = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_V1_LAYER = re.compile(r"([0-9a-f]{64})/layer\.tar")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class ArchiveLayer:
    digest: str  # "sha256:<hex>" of the blob as stored in the archive
    media_type: str
    size: int


@dataclass(frozen=True)
class ArchiveImage:
    names: tuple[str, ...]  # as written in the archive ("busybox:latest", "127.0.0.1:5000/x:1"); may be empty
    manifest: bytes | None  # as stored (oci-archive); None for docker-archive
    manifest_media_type: str | None
    config: bytes
    config_digest: str  # sha256 of config, verified against the digest the archive names it by
    layers: tuple[ArchiveLayer, ...]


class Archive:
    """An image tarball open for random access; use as a context manager."""

    def __init__(self, path: Path, *, platform: Platform | None = None) -> None:
        self.path = path
        self.platform = (platform or node_platform()).normalized()
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115  (closed by close())
        except tarfile.ReadError as exc:
            raise InvalidImage(f"{path}: not a tar archive (plain, gzip, bzip2 or xz)") from exc
        except _READ_ERRORS as exc:
            raise InvalidImage(f"{path}: cannot open: {exc}") from exc
        try:
            members = self._tar.getmembers()
        except _READ_ERRORS as exc:
            self._tar.close()
            raise InvalidImage(f"{path}: unreadable tar archive: {exc}") from exc
        self._members = {posixpath.normpath(m.name).lstrip("/"): m for m in members}
        self._blobs: dict[str, tarfile.TarInfo] = {}
        self._docker_layers: dict[str, ArchiveLayer] = {}
        self._images: list[ArchiveImage] | None = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def images(self) -> list[ArchiveImage]:
        if self._images is None:
            if "index.json" in self._members:
                self._images = self._oci_images()
            elif "manifest.json" in self._members:
                self._images = self._docker_images()
            else:
                raise self._error("neither a docker-archive (no manifest.json) nor an oci-archive (no index.json)")
        return list(self._images)

    def open_blob(self, layer: ArchiveLayer) -> BinaryIO:
        """A readable stream of the layer as stored; the caller verifies its digest while reading."""
        if self._images is None:
            self.images()
        member = self._blobs.get(layer.digest)
        if member is None:
            raise self._error(f"{layer.digest} is not a layer of any image in the archive")
        return self._open(member)

    # oci-archive

    def _oci_images(self) -> list[ArchiveImage]:
        if "oci-layout" in self._members:
            _, layout = self._read_json(self._member("oci-layout", "oci-layout"), "oci-layout")
            if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
                raise self._error("oci-layout: imageLayoutVersion missing")
        _, index = self._read_json(self._member("index.json", "index"), "index.json")
        found: dict[str, tuple[list[str], str, bytes, dict[str, object]]] = {}
        foreign: list[str] = []
        for i, desc in enumerate(self._descriptors(index, "index.json")):
            where = f"index.json manifests[{i}]"
            platform = self._platform_of(desc, where)
            if platform is not None and platform.normalized() != self.platform:
                foreign.append(str(platform))
                continue
            resolved = self._resolve(desc, where, 0)
            if resolved is None:
                continue
            digest, media_type, raw, manifest = resolved
            names = found.setdefault(digest, ([], media_type, raw, manifest))[0]
            annotations = desc.get("annotations")
            if isinstance(annotations, dict):
                name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
                if isinstance(name, str) and name and name not in names:
                    names.append(name)
        if not found:
            if foreign:
                raise self._no_platform("index.json", foreign)
            raise self._error("index.json lists no image manifest")
        return [self._oci_image(d, *entry) for d, entry in found.items()]

    def _resolve(
        self, desc: dict[str, object], where: str, depth: int
    ) -> tuple[str, str, bytes, dict[str, object]] | None:
        """Follow a descriptor through nested indexes to this node's manifest: (digest, type, bytes, JSON)."""
        media_type = desc.get("mediaType")
        if media_type is not None and media_type not in MANIFEST_TYPES + INDEX_TYPES:
            return None  # an artifact, signature or attestation, not an image
        raw, blob = self._json_blob(desc, where)
        if not isinstance(blob, dict):
            raise self._error(f"{where}: expected a JSON object")
        if media_type is None:
            media_type = blob.get("mediaType") or (INDEX_TYPES[0] if "manifests" in blob else MANIFEST_TYPES[0])
        if media_type in MANIFEST_TYPES:
            return str(desc["digest"]), str(media_type), raw, blob
        if media_type not in INDEX_TYPES:
            return None
        if depth >= MAX_INDEX_DEPTH:
            raise self._error(f"{where}: indexes nested deeper than {MAX_INDEX_DEPTH}")
        present: list[str] = []
        for i, child in enumerate(self._descriptors(blob, where)):
            platform = self._platform_of(child, f"{where} manifests[{i}]")
            if platform is None or platform.normalized() == self.platform:
                resolved = self._resolve(child, f"{where} manifests[{i}]", depth + 1)
                if resolved is not None:
                    return resolved
            else:
                present.append(str(platform))
        raise self._no_platform(where, present)

    def _oci_image(
        self, digest: str, names: list[str], media_type: str, raw: bytes, manifest: dict[str, object]
    ) -> ArchiveImage:
        where = f"manifest {digest}"
        config_desc, layer_descs = manifest.get("config"), manifest.get("layers")
        if not isinstance(config_desc, dict) or not isinstance(layer_descs, list):
            raise self._error(f"{where}: config or layers missing")
        config, config_json = self._json_blob(config_desc, f"config of {where}")
        layers: list[ArchiveLayer] = []
        for i, desc in enumerate(layer_descs):
            layer_where = f"{where} layers[{i}]"
            if not isinstance(desc, dict) or not isinstance(desc.get("mediaType"), str):
                raise self._error(f"{layer_where}: not a descriptor with a mediaType")
            layer_digest, size = self._check_descriptor(desc, layer_where)
            member = self._blob_member(layer_digest, layer_where)
            if member.size != size:
                raise self._error(f"{layer_where}: {member.name} holds {member.size} bytes, manifest says {size}")
            self._blobs[layer_digest] = member
            layers.append(ArchiveLayer(layer_digest, str(desc["mediaType"]), size))
        self._check_diff_ids(config_json, len(layers), f"config of {where}")
        return ArchiveImage(tuple(names), raw, media_type, config, str(config_desc["digest"]), tuple(layers))

    def _descriptors(self, index: object, where: str) -> list[dict[str, object]]:
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
            raise self._error(f"{where}: expected an object with a list of descriptors in manifests")
        return manifests

    def _platform_of(self, desc: dict[str, object], where: str) -> Platform | None:
        value = desc.get("platform")
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("os"), str):
            raise self._error(f"{where}: malformed platform {value!r}")
        return Platform(value["os"], str(value.get("architecture", "")), str(value.get("variant", "")))

    def _no_platform(self, where: str, present: list[str]) -> InvalidImage:
        listed = ", ".join(sorted(set(present))) or "none"
        return self._error(f"{where} has no image for {self.platform}, only for: {listed}")

    # docker-archive

    def _docker_images(self) -> list[ArchiveImage]:
        _, entries = self._read_json(self._member("manifest.json", "manifest.json"), "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise self._error("manifest.json: expected a non-empty list of images")
        images: list[ArchiveImage] = []
        for i, entry in enumerate(entries):
            where = f"manifest.json[{i}]"
            config_name = entry.get("Config") if isinstance(entry, dict) else None
            layer_names = entry.get("Layers") if isinstance(entry, dict) else None
            tags = (entry.get("RepoTags") if isinstance(entry, dict) else None) or []
            if (
                not isinstance(config_name, str)
                or not isinstance(layer_names, list)
                or not isinstance(tags, list)
                or not all(isinstance(n, str) for n in [*layer_names, *tags])
            ):
                raise self._error(f"{where}: expected Config, Layers and RepoTags strings")
            config, config_json = self._read_json(self._member(config_name, f"config of {where}"), f"config of {where}")
            config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
            named = _HEX_PATH.fullmatch(posixpath.normpath(config_name))
            if named and named[1] != config_digest.removeprefix("sha256:"):
                raise self._error(f"config {config_name} hashes to {config_digest}, not the digest in its name")
            diff_ids = self._check_diff_ids(config_json, len(layer_names), f"config {config_name}")
            layers = tuple(self._docker_layer(n, d, where) for n, d in zip(layer_names, diff_ids, strict=True))
            if not tags and layer_names and (v1 := _V1_LAYER.fullmatch(posixpath.normpath(layer_names[-1]))):
                tags = self._repositories().get(v1[1], [])
            images.append(ArchiveImage(tuple(tags), None, None, config, config_digest, layers))
        return images

    def _docker_layer(self, name: str, diff_id: str, where: str) -> ArchiveLayer:
        member = self._member(name, f"layer of {where}")
        if member.name in self._docker_layers:
            return self._docker_layers[member.name]
        with self._open(member) as stream:
            try:
                gzipped = stream.read(2) == b"\x1f\x8b"
                if named := _BLOB_PATH.fullmatch(posixpath.normpath(name)):
                    digest = f"sha256:{named[1]}"
                elif not gzipped:
                    digest = diff_id  # an uncompressed layer's sha256 is its diff_id
                else:
                    hasher = hashlib.sha256(b"\x1f\x8b")
                    while chunk := stream.read(1 << 20):
                        hasher.update(chunk)
                    digest = "sha256:" + hasher.hexdigest()
            except _READ_ERRORS as exc:
                raise self._error(f"cannot read {member.name}: {exc}") from exc
        layer = ArchiveLayer(digest, DOCKER_LAYER_GZIP if gzipped else DOCKER_LAYER, member.size)
        self._docker_layers[member.name] = layer
        self._blobs[digest] = member
        return layer

    def _repositories(self) -> dict[str, list[str]]:
        """The legacy repositories file as v1 id → ["repo:tag", ...]; empty when absent."""
        if "repositories" not in self._members:
            return {}
        _, repositories = self._read_json(self._member("repositories", "repositories"), "repositories")
        by_id: dict[str, list[str]] = {}
        for repo, tags in repositories.items() if isinstance(repositories, dict) else ():
            for tag, v1_id in tags.items() if isinstance(tags, dict) else ():
                by_id.setdefault(str(v1_id), []).append(f"{repo}:{tag}")
        return by_id

    # members and blobs

    def _check_diff_ids(self, config: object, layers: int, where: str) -> list[str]:
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in diff_ids):
            raise self._error(f"{where}: rootfs.diff_ids missing or not sha256 digests")
        if len(diff_ids) != layers:
            raise self._error(f"{where}: {len(diff_ids)} diff_ids for {layers} layers")
        return diff_ids

    def _check_descriptor(self, desc: dict[str, object], where: str) -> tuple[str, int]:
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise self._error(f"{where}: digest {digest!r} is not sha256:<64 hex>")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise self._error(f"{where}: size {size!r} is not a byte count")
        return digest, size

    def _json_blob(self, desc: dict[str, object], where: str) -> tuple[bytes, object]:
        """Read a manifest, index or config blob and check it against its descriptor."""
        digest, size = self._check_descriptor(desc, where)
        if size > MAX_JSON_SIZE:
            raise self._error(f"{where}: {size} bytes is over the {MAX_JSON_SIZE} byte limit for JSON")
        member = self._blob_member(digest, where)
        raw, value = self._read_json(member, where)
        if len(raw) != size:
            raise self._error(f"{where}: {member.name} holds {len(raw)} bytes, descriptor says {size}")
        actual = "sha256:" + hashlib.sha256(raw).hexdigest()
        if actual != digest:
            raise self._error(f"{where}: {member.name} hashes to {actual}, not {digest}")
        return raw, value

    def _blob_member(self, digest: str, where: str) -> tarfile.TarInfo:
        return self._member("blobs/sha256/" + digest.removeprefix("sha256:"), f"blob of {where}")

    def _member(self, name: str, what: str) -> tarfile.TarInfo:
        member = self._members.get(posixpath.normpath(name).lstrip("/"))
        if member is None:
            raise self._error(f"{what}: {name} is missing from the archive")
        if member.issym() or member.islnk():
            raise self._error(f"{what}: {name} is a {'symlink' if member.issym() else 'hardlink'}, not a file")
        if not member.isreg():
            raise self._error(f"{what}: {name} is not a regular file")
        return member

    def _read_json(self, member: tarfile.TarInfo, where: str) -> tuple[bytes, object]:
        if member.size > MAX_JSON_SIZE:
            raise self._error(f"{where}: {member.size} bytes is over the {MAX_JSON_SIZE} byte limit for JSON")
        with self._open(member) as stream:
            try:
                raw = stream.read()
            except _READ_ERRORS as exc:
                raise self._error(f"cannot read {member.name}: {exc}") from exc
        try:
            return raw, json.loads(raw)
        except ValueError as exc:
            label = member.name if where == member.name else f"{where}: {member.name}"
            raise self._error(f"{label}: malformed JSON: {exc}") from exc

    def _open(self, member: tarfile.TarInfo) -> BinaryIO:
        try:
            stream = self._tar.extractfile(member)
        except _READ_ERRORS as exc:
            raise self._error(f"cannot read {member.name}: {exc}") from exc
        if stream is None:  # unreachable: _member() admits regular files only
            raise self._error(f"{member.name} is not a regular file")
        return cast(BinaryIO, stream)

    def _error(self, what: str) -> InvalidImage:
        return InvalidImage(f"{self.path}: {what}")
