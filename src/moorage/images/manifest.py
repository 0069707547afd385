"""Image manifests, indexes and configs, parsed and checked (pure: no I/O).

Four media types carry an image: the OCI image index and the Docker manifest list point at one manifest per
platform; the OCI image manifest and the Docker schema2 manifest name a config blob and the layer blobs. A
registry may answer with any of them, so :func:`parse` accepts all four and refuses Docker schema1 (signed
or not) with a message saying why. An index resolves to one manifest through :func:`select_platform`.
"""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass
from typing import Any

from moorage.errors import InvalidImage
from moorage.images.reference import validate_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
"""What a pull asks for: schema1 is deliberately absent, so a registry that can convert does."""

LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    }
)

MAX_MANIFEST_BYTES = 4 << 20
"""Manifests, indexes and configs larger than this are refused, as containerd and the distribution spec do."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def normalized(self) -> Platform:
        """Spell default variants one way: arm64/v8 and amd64/v1 drop the variant, bare arm means arm/v7."""
        variant = self.variant
        if (self.architecture, variant) in (("arm64", "v8"), ("amd64", "v1")):
            variant = ""
        elif self.architecture == "arm" and not variant:
            variant = "v7"
        return Platform(self.os, self.architecture, variant)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def node_platform() -> Platform:
    """The platform this node runs, in OCI terms (``linux/amd64``, ``linux/arm64/v8``, ``linux/arm/v7``)."""
    machine = host_platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def check_size(what: str, size: int) -> None:
    if size > MAX_MANIFEST_BYTES:
        raise InvalidImage(f"{what} is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for manifests")


def parse(body: bytes, content_type: str, where: str) -> Index | Manifest:
    """Parse a manifest or index fetched from ``where`` (a reference, for error messages)."""
    check_size(f"manifest of {where}", len(body))
    doc = _json_object(body, f"manifest of {where}")
    media_type = str(doc.get("mediaType") or content_type.split(";", maxsplit=1)[0].strip())
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise InvalidImage(
            f"{where} is a Docker schema1 image, which moorage does not pull: it is deprecated and unsafe; "
            "push the image again with a current docker or skopeo"
        )
    if media_type in INDEX_TYPES or (not media_type and "manifests" in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidImage(f"index of {where} has no list of manifests")
        return Index(media_type or OCI_INDEX, tuple(_descriptor(e, f"index of {where}") for e in entries))
    if media_type in MANIFEST_TYPES or (not media_type and "config" in doc):
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidImage(f"manifest of {where} has no list of layers")
        manifest = Manifest(
            media_type or OCI_MANIFEST,
            _descriptor(doc.get("config"), f"manifest of {where}: config"),
            tuple(_descriptor(layer, f"manifest of {where}: layer") for layer in layers),
        )
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise InvalidImage(f"manifest of {where}: layer {layer.digest} has unsupported type {layer.media_type}")
        return manifest
    raise InvalidImage(f"{where}: unsupported manifest type {media_type or content_type or 'unknown'!r}")


def select_platform(index: Index, want: Platform, where: str) -> Descriptor:
    """The index entry for ``want``: exact variant first, then any variant of the architecture (arm64's is v8)."""
    candidates = [d for d in index.manifests if d.media_type in MANIFEST_TYPES or not d.media_type]
    for match in (_exact, _same_arch, _unlabelled):
        found = [d for d in candidates if match(d.platform, want)]
        if found:
            return found[0]
    offered = sorted({str(d.platform) for d in candidates if d.platform}) or ["none"]
    raise InvalidImage(f"{where} has no image for this node's platform {want}; it offers {', '.join(offered)}")


def _exact(p: Platform | None, want: Platform) -> bool:
    return p is not None and (p.os, p.architecture, p.variant) == (want.os, want.architecture, want.variant)


def _same_arch(p: Platform | None, want: Platform) -> bool:
    return p is not None and (p.os, p.architecture) == (want.os, want.architecture)


def _unlabelled(p: Platform | None, want: Platform) -> bool:
    return p is None and len(want.os) > 0


@dataclass(frozen=True)
class ImageConfig:
    """What the runtime uses of an image config; ``raw`` keeps the whole document for verbose status."""

    raw: dict[str, Any]
    diff_ids: tuple[str, ...]
    user: str

    @property
    def platform(self) -> Platform:
        return Platform(
            str(self.raw.get("os", "")), str(self.raw.get("architecture", "")), str(self.raw.get("variant", ""))
        )


def parse_config(body: bytes, where: str) -> ImageConfig:
    check_size(f"config of {where}", len(body))
    doc = _json_object(body, f"config of {where}")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidImage(f"config of {where} has no rootfs.diff_ids list")
    for diff_id in diff_ids:
        _digest(diff_id, f"config of {where}: diff_id")
    runtime = doc.get("config")
    user = runtime.get("User") if isinstance(runtime, dict) else ""
    return ImageConfig(doc, tuple(diff_ids), str(user or ""))


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImage(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[... nested deeper than the parser goes: no manifest is
        raise InvalidImage(f"{what} is JSON nested too deep") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"{what} is not a JSON object")
    return doc


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidImage(f"{what}: descriptor is not an object")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidImage(f"{what}: descriptor has no valid size")
    raw_platform = value.get("platform")
    plat = None
    if isinstance(raw_platform, dict):
        plat = Platform(
            str(raw_platform.get("os", "")),
            str(raw_platform.get("architecture", "")),
            str(raw_platform.get("variant", "")),
        )
    urls = value.get("urls") or ()
    return Descriptor(
        str(value.get("mediaType", "")),
        _digest(value.get("digest"), what),
        size,
        plat,
        tuple(str(u) for u in urls) if isinstance(urls, list) else (),
    )


def _digest(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidImage(f"{what}: missing digest")
    try:
        validate_digest(value)
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"{what}: {exc}") from None
    if not value.startswith("sha256:"):
        raise InvalidImage(f"{what}: digest {value} uses an algorithm moorage does not verify (only sha256)")
    return value
