"""A container's root filesystem: an overlay of its image's layer snapshots with a writable layer on top.

The writable layer (``upper``) and overlayfs's ``work`` dir live under ``<root>/containers/<id>`` and go
with the container. The mount is made by mount(8) run from the snapshots directory, so the lowerdir list
holds short relative names (64 hex characters a layer) and an image of up to ~55 layers fits the kernel's
one-page limit on mount options.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from moorage.errors import MoorageError
from moorage.node.podfiles import unmount

MAX_OPTIONS = 4000


def mount(snapshots: Path, chain: Sequence[str], layer_dir: Path, target: Path) -> None:
    """Mount the overlay of ``chain`` (bottom layer first) at ``target``, writable in ``layer_dir``."""
    upper, work = layer_dir / "upper", layer_dir / "work"
    for path in (upper, work, target):
        path.mkdir(parents=True, exist_ok=True)
    lower = ":".join(c.removeprefix("sha256:") for c in reversed(chain))
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(options) > MAX_OPTIONS:
        raise MoorageError(f"the image has {len(chain)} layers, more than one overlay mount can stack")
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        cwd=snapshots,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MoorageError(f"cannot mount the container's root filesystem at {target}: {proc.stderr.strip()}")


def remove(layer_dir: Path, target: Path) -> None:
    """Unmount and delete the container's root filesystem and writable layer; safe to repeat."""
    unmount(target)
    shutil.rmtree(layer_dir, ignore_errors=True)
