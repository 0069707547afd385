"""A container's root filesystem: an overlay of its image's layer snapshots with a writable layer on top.

The writable layer (``upper``) and overlayfs's ``work`` dir live under ``<root>/containers/<id>`` and go
with the container. The mount is made by mount(8) run from the snapshots directory, so the lowerdir list
holds short relative names (64 hex characters a layer) and an image of up to ~55 layers fits the kernel's
one-page limit on mount options.

A container of a pod in a user namespace (``userns``) gets an overlay over *idmapped* binds of its layers, made
under ``<layer_dir>/lower/<n>`` (overlayfs cannot be idmapped itself; it takes idmapped layers): a file owned by
0 on disk is then owned by the pod's root inside. The upper dir is a plain directory owned by the pod's root on
the host (an idmapped upper layer is refused by overlayfs), so a file the container's root writes is stored with
its host uid, as containerd's overlay snapshotter does it with idmapped layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moorage.errors import MoorageError
from moorage.node import idmap
from moorage.node.podfiles import unmount

MAX_OPTIONS = 4000
LOWER_DIR = "lower"


@dataclass(frozen=True)
class Userns:
    """The pod's pinned user namespace and the host ids of its root."""

    path: Path
    root_uid: int
    root_gid: int


def mount(snapshots: Path, chain: Sequence[str], layer_dir: Path, target: Path, userns: Userns | None = None) -> None:
    """Mount the overlay of ``chain`` (bottom layer first) at ``target``, writable in ``layer_dir``; with
    ``userns``, over idmapped binds of the layers."""
    upper, work = layer_dir / "upper", layer_dir / "work"
    for path in (upper, work, target):
        path.mkdir(parents=True, exist_ok=True)
    names = [c.removeprefix("sha256:") for c in reversed(chain)]
    cwd = snapshots
    if userns is not None:
        os.chown(upper, userns.root_uid, userns.root_gid)
        cwd = layer_dir / LOWER_DIR
        cwd.mkdir(mode=0o711, exist_ok=True)
        for index, name in enumerate(names):
            idmap.bind(snapshots / name, cwd / str(index), userns.path)
        names = [str(index) for index in range(len(names))]
    options = f"lowerdir={':'.join(names)},upperdir={upper},workdir={work}"
    if len(options) > MAX_OPTIONS:
        raise MoorageError(f"the image has {len(chain)} layers, more than one overlay mount can stack")
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MoorageError(f"cannot mount the container's root filesystem at {target}: {proc.stderr.strip()}")


def remove(layer_dir: Path, target: Path) -> None:
    """Unmount and delete the container's root filesystem and writable layer; safe to repeat."""
    unmount(target)
    lower = layer_dir / LOWER_DIR
    if lower.is_dir():  # idmapped binds of the image's layers: never rmtree through one
        for bind in lower.iterdir():
            idmap.detach_all(bind)
            try:
                bind.rmdir()
            except OSError as exc:
                raise MoorageError(f"cannot remove the idmapped layer bind {bind}: {exc.strerror}") from exc
    shutil.rmtree(layer_dir, ignore_errors=True)
