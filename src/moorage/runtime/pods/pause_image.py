"""Moorage's own pause image, built on the node from the pause program we ship, so a node without registry
access still runs pods that share one PID namespace.

The image is an OCI archive made here (one uncompressed layer holding ``/pause``, a config whose entrypoint
is ``/pause``) and loaded through the ordinary image import, so it is stored, listed and pinned like any
other image. It is built at start-up when ``sandbox_image`` names it and the store does not have it yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import moorage
from moorage import defaults
from moorage.errors import MoorageError
from moorage.images.manifest import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, node_platform
from moorage.images.service import ImageManager

LOCAL_NAME = "localhost/moorage/pause"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
PAUSE_CONFIG: dict[str, Any] = {"Entrypoint": ["/pause"], "User": "65535:65535"}
DEFAULT_BINARY = defaults.helper("pause")


def is_local(image: str) -> bool:
    return image.partition(":")[0] == LOCAL_NAME


def pause_binary(configured: str) -> Path:
    """The pause program: the configured path, else the one ``make pause`` builds in the source tree, else the
    one the Debian package installs (/usr/lib/moorage/libexec/pause)."""
    path = Path(configured) if configured else DEFAULT_BINARY
    if not path.is_file():
        raise MoorageError(
            f"the pause program {path} does not exist; build it with `make pause` (runtime.pause_binary)"
        )
    return path


async def ensure(images: ImageManager, name: str, binary: Path, scratch: Path) -> str:
    """Make sure the store has the local pause image ``name``; returns its id."""
    found = await images.find(name)
    if found is not None:
        return found.id
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, suffix=".tar") as archive:
        archive.write(oci_archive(name, {"pause": (binary.read_bytes(), 0o755)}, PAUSE_CONFIG, "pause image"))
        archive.flush()
        (record,) = await images.import_archive(Path(archive.name))
    return record.id


def oci_archive(name: str, files: dict[str, tuple[bytes, int]], config: dict[str, Any], what: str) -> bytes:
    """An OCI archive of one image ``name``: one uncompressed layer of ``files`` (path → content, mode) and the
    runtime ``config`` (Entrypoint, Cmd, User...), for the node's platform."""
    layer = _tar(files)
    layer_digest = _digest(layer)
    platform = node_platform()
    config_blob = _json(
        {
            "architecture": platform.architecture,
            "os": platform.os,
            **({"variant": platform.variant} if platform.variant else {}),
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": f"moorage {moorage.__version__} {what}"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config_blob), "size": len(config_blob)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": len(layer)}],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    )
    entries: dict[str, tuple[bytes, int]] = {
        "oci-layout": (_json({"imageLayoutVersion": "1.0.0"}), 0o644),
        "index.json": (index, 0o644),
    }
    for blob in (layer, config_blob, manifest):
        entries[f"blobs/sha256/{_digest(blob).removeprefix('sha256:')}"] = (blob, 0o644)
    return _tar(entries)


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
