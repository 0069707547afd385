"""Image volumes (Kubernetes' ImageVolume, KEP-4639): an image's files mounted read-only into a container.

A CRI mount with ``image`` set names an image the kubelet pulled first (with the pod's credentials); critest
and the kubelet send its id (PullImage's ``image_ref``). For each such mount, in CreateContainer:

1. :func:`resolve`, before the container is stored: the image must be on the node (NotFound naming it), the
   mount read-only (an image volume is read-only by definition: INVALID_ARGUMENT otherwise), ``image_sub_path``
   relative without ``..``. :func:`recorded` is the config kept for the container: each such mount's
   ``image.image_ref`` is the image id, which ContainerStatus.mounts reports (what the kubelet's image GC and
   critest read); the ids are also kept in the container's status, so RemoveImage refuses an image a volume uses.
2. :func:`mount`: an overlay of the image's layer snapshots with lower dirs only, at
   ``<bundle>/image-volumes/<mount index>/rootfs``. With no upper dir there is nothing to write to: the volume
   is read-only by construction, whatever the runtime does with the bind. overlayfs needs two lower dirs without
   an upper one, so an empty directory is always the bottom layer. The sub path is then resolved inside the
   mounted volume, symlinks re-rooted there (:func:`~moorage.runtime.spec.rootfs.secure_join`), and must be a
   directory of the image, as containerd requires; the volume cannot change under the check, being read-only.
3. :func:`as_binds`: the config the OCI spec is built from, where each image mount became a plain read-only
   bind of that directory (``host_path``), keeping the CRI mount's propagation and options: not noexec.
4. :func:`remove`: unmount and delete every volume under ``<bundle>/image-volumes``. It runs in the container's
   teardown, so on RemoveContainer, on every failure of CreateContainer (rollback), and for a container a crash
   caught half-made (start-up recovery); it works from the directories alone, so it also finds what a daemon
   killed mid-way left mounted.

Volumes are per container and per mount (containerd shares one per pod and image; nothing here needs that).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from moorage.cri import pb
from moorage.errors import InvalidArgument, MoorageError, NotFound
from moorage.node import idmap
from moorage.node.podfiles import unmount
from moorage.runtime.containers.writable import LOWER_DIR, MAX_OPTIONS
from moorage.runtime.spec.rootfs import secure_join
from moorage.store.image_records import ImageRecord

VOLUMES_DIR = "image-volumes"
MAX_STACKED = 16  # unmount attempts per volume: a mount stacked over it by accident goes too


@dataclass(frozen=True)
class ImageVolume:
    index: int
    """The mount's position in ContainerConfig.mounts."""
    image: ImageRecord
    sub_path: str


def is_image_mount(mount: pb.Mount) -> bool:
    return mount.HasField("image") and bool(mount.image.image)


async def resolve(
    mounts: Sequence[pb.Mount], find: Callable[[str], Awaitable[ImageRecord | None]]
) -> list[ImageVolume]:
    """The image volumes among ``mounts``, their images found by ``find`` (the image service's)."""
    volumes = []
    for i, m in enumerate(mounts):
        field = f"mounts[{i}]"
        if not is_image_mount(m):
            if m.image_sub_path:
                raise InvalidArgument(f"{field}.image_sub_path: only an image volume ({field}.image) has a sub path")
            continue
        if not m.readonly:
            raise InvalidArgument(
                f"{field}: the image volume of {m.image.image!r} at {m.container_path} must be readonly "
                "(image volumes are read-only)"
            )
        image = await find(m.image.image)
        if image is None:
            raise NotFound(f"{field}.image: image {m.image.image!r} is not on the node; pull it first")
        volumes.append(ImageVolume(i, image, _sub_path(m.image_sub_path, f"{field}.image_sub_path")))
    return volumes


def _sub_path(text: str, field: str) -> str:
    if text.startswith("/"):
        raise InvalidArgument(f"{field}: {text!r} must be relative to the image's root")
    if ".." in text.split("/"):
        raise InvalidArgument(f"{field}: {text!r} must not contain '..'")
    return text


def recorded(config: pb.ContainerConfig, volumes: Sequence[ImageVolume]) -> pb.ContainerConfig:
    """``config`` as the container keeps it: each image mount's ``image.image_ref`` set to the image id."""
    out = pb.ContainerConfig()
    out.CopyFrom(config)
    for volume in volumes:
        out.mounts[volume.index].image.image_ref = volume.image.id
    return out


def as_binds(config: pb.ContainerConfig, sources: Mapping[int, Path]) -> pb.ContainerConfig:
    """``config`` for the OCI spec: the image mount at each index of ``sources`` a read-only bind of its source."""
    out = pb.ContainerConfig()
    out.CopyFrom(config)
    for index, source in sources.items():
        m = out.mounts[index]
        m.ClearField("image")
        m.image_sub_path = ""
        m.host_path = str(source)
        m.readonly = True
    return out


def volume_dir(bundle: Path, index: int) -> Path:
    return bundle / VOLUMES_DIR / str(index)


def mount(snapshots: Path, volumes: Sequence[ImageVolume], bundle: Path, userns: Path | None = None) -> dict[int, Path]:
    """Mount every volume under ``bundle``; returns mount index → the host directory to bind (the sub path's).
    With ``userns`` (a pod in a user namespace) the overlay is over idmapped binds of the layers, under
    ``<volume>/lower/<n>``, as the container's root is (:mod:`moorage.runtime.containers.writable`).

    What is mounted before a failure stays for :func:`remove`, which the caller's rollback runs."""
    sources = {}
    for volume in volumes:
        root = _mount_one(snapshots, volume, volume_dir(bundle, volume.index), userns)
        sources[volume.index] = _source(root, volume)
    return sources


def _mount_one(snapshots: Path, volume: ImageVolume, directory: Path, userns: Path | None) -> Path:
    target, empty = directory / "rootfs", directory / "empty"
    for path in (target, empty):
        path.mkdir(parents=True, exist_ok=True)
    layers = [layer.chain_id.removeprefix("sha256:") for layer in reversed(volume.image.layers)]
    cwd = snapshots
    if userns is not None:
        cwd = directory / LOWER_DIR
        cwd.mkdir(mode=0o711, exist_ok=True)
        for index, name in enumerate(layers):
            idmap.bind(snapshots / name, cwd / str(index), userns)
        layers = [str(index) for index in range(len(layers))]
    lower = [*layers, str(empty)]
    if len(lower) < 2:  # an image without layers
        (directory / "empty2").mkdir(exist_ok=True)
        lower.append(str(directory / "empty2"))
    options = f"ro,lowerdir={':'.join(lower)}"
    if len(options) > MAX_OPTIONS:
        count = len(volume.image.layers)
        raise MoorageError(f"image {volume.image.id} has {count} layers, more than one overlay mount can stack")
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        cwd=cwd,  # the lower dirs are relative to it: short names, so more layers fit in one page
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MoorageError(
            f"cannot mount image {volume.image.id} as the volume of mounts[{volume.index}] at {target}: "
            f"{proc.stderr.strip()}"
        )
    return target


def _source(root: Path, volume: ImageVolume) -> Path:
    if not volume.sub_path:
        return root
    path = secure_join(root, volume.sub_path)
    field = f"mounts[{volume.index}].image_sub_path"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        raise InvalidArgument(f"{field}: {volume.sub_path!r} does not exist in image {volume.image.id}") from None
    if not stat.S_ISDIR(mode):
        raise InvalidArgument(f"{field}: {volume.sub_path!r} is not a directory in image {volume.image.id}")
    return path


def remove(bundle: Path) -> None:
    """Unmount and delete every image volume of the container whose bundle is ``bundle``; safe to repeat."""
    base = bundle / VOLUMES_DIR
    if not base.is_dir():
        return
    for directory in sorted(base.iterdir()):
        target = directory / "rootfs"
        for _ in range(MAX_STACKED):
            if not os.path.ismount(target):
                break
            unmount(target)
        if os.path.ismount(target):
            raise MoorageError(f"cannot unmount the image volume at {target}: still mounted")
        lower = directory / LOWER_DIR
        if lower.is_dir():  # idmapped binds of the image's layers: never rmtree through one
            for bind in lower.iterdir():
                idmap.detach_all(bind)
                bind.rmdir()
        shutil.rmtree(directory)
    base.rmdir()
